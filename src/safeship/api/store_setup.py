"""The one way a command or the controller opens the store of a config: the store URL from the
config (errors name the config file), then the rollback settings `rollback-manager --configure`
saved for each service applied over the config's, each validated with a way out named."""

from __future__ import annotations

from pathlib import Path

from safeship.config.loader import validate
from safeship.config.models import RollbackConfiguration, SafeshipConfig
from safeship.config.paths import store_url
from safeship.errors import ConfigError
from safeship.store import Store, StoreURLError


def open_store(config: SafeshipConfig, config_path: str | Path) -> Store:
    """Open the store and apply the rollback settings saved by `rollback-manager --configure`.

    A bad `store.url` is a ConfigError naming the config file; stored settings that no longer
    validate are an InputError naming the service and how to drop them."""
    source = str(config_path)
    try:
        store = Store(store_url(config, config_path))
    except StoreURLError as exc:
        raise ConfigError(source, "store.url", exc.detail) from None
    apply_stored_settings(config, store)
    return store


def apply_stored_settings(config: SafeshipConfig, store: Store) -> None:
    """Put the rollback settings `rollback-manager --configure` saved over the config's, service by
    service (also done to a config the controller reloads)."""
    for name, service in config.services.items():
        saved = store.service_rollback_settings(name)
        if saved is not None:
            service.rollback = validate(RollbackConfiguration, saved,
                                        f"stored rollback settings of {name} (drop them with "
                                        f"`rollback-manager --reset --service {name}`)")
