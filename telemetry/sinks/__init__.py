"""One small module per sink. Import the one you need; none is imported eagerly."""
