"""Energy, latency and spike-count reports (md, html, json, png) from simulation runs."""
