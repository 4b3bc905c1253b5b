"""The node-worker process (`python -m services.node.worker`): RQ jobs, a client of the node."""
