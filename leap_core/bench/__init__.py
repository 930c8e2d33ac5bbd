"""Speed, measured side by side in one process: exit modes (latency), deployment paths (deploy_bench) and int8 quality (int8_quality)."""
