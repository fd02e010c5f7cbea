"""Metric providers: where custom gauges come from, one module per source."""
