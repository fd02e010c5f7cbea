"""user-service: a small HTTP service whose per-version behaviour comes from releases.yaml."""
