"""The daemon's HTTP server: health, metrics, the operator API and console, the rating page, webhooks."""
