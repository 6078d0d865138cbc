"""Access: API keys, the callers they stand for (Principal), what each role may do, how personal
data is shown to it, and the append-only audit log.

Uses the shared modules (tables, sql, brands); the other domains do not import it: resolvers pass
what they need (a scope's brand ids, whether personal data is clear) down as plain values.
"""
