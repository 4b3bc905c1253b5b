"""`python -m services.node.worker`: the node-worker, running eval and generation jobs."""

from services.node.worker.runner import main

if __name__ == "__main__":
    main()
