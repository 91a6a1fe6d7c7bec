"""Load tests of a soundstream deployment with Locust: ``locustfile`` (dashboard readers
over HTTP, sensors over AMQP) and ``run`` (``scripts/loadtest``: run it headless and
judge the run against ``thresholds.toml``)."""
