"""The checkpoint format, shared by the trainer (writes), the gateway (serves) and the node (pulls).

Torch-free on purpose: a node host or the gateway reads manifests and hashes files without
the training stack. `manifest` is the format (ids, the manifest, the job cursor), `settings`
where checkpoints live and what retention keeps, `durable` the fsync and sha256 helpers every
writer of a "complete when renamed" directory uses.
"""
