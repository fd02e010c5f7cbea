"""The store's schema revisions (Alembic), applied by `safeship.store.migrate` when a store opens."""
