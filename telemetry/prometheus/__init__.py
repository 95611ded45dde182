"""Everything Prometheus: the series Elastiscope exports and how they are kept and served.

``catalogue`` lists the series; ``classify`` maps a torchelastic ``put_metric`` name onto one;
``registry`` keeps them on a private CollectorRegistry; ``exposition`` renders a registry for
``/metrics``; ``push`` sends one to a pushgateway. The sink that turns records into updates is
``telemetry.sinks.prometheus``.

Importing this package imports nothing; its modules import prometheus_client, which
``import telemetry`` never does.
"""
