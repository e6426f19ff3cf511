"""saegov registry: the system of record (SAE versions, concepts, feature mappings, reviews,
blocklists, deployments, generations) and its tamper-evident audit log. Never imports torch.

Entry point from Python: `registry.store.Store.open()`.
"""
