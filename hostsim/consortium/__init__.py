"""The etcd-backed consortium: one process per node, ordering through etcd (docs/consortium.md)."""
