"""Elastiscope's worker-side package: what a training script may import (``from elastiscope
import progress``) and the optimizer-step hook the agent arranges. Imports nothing here, so
importing the package costs nothing and pulls in neither torch nor the agent."""
