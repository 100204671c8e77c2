"""The runtime catalog: data in runtimes/catalog.toml, filtered by settings."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from server.domain.errors import invalid_argument

_API_FIELDS = ("id", "name", "version", "base", "image", "logo", "supports")


@dataclass(frozen=True)
class Runtime:
    id: str
    name: str
    version: str
    base: str
    image: str
    logo: str
    supports: tuple[str, ...]
    language: str
    recipe: str


def load_catalog(path: Path, image_overrides: dict[str, str] | None = None) -> list[Runtime]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    runtimes = []
    for entry in data.get("runtime", []):
        missing = [f for f in _API_FIELDS + ("language", "recipe") if f not in entry]
        if missing:
            raise ValueError(f"{path}: runtime {entry.get('id', '?')} lacks {', '.join(missing)}")
        image = (image_overrides or {}).get(entry["id"], entry["image"])
        runtimes.append(
            Runtime(
                id=entry["id"],
                name=entry["name"],
                version=entry["version"],
                base=entry["base"],
                image=image,
                logo=entry["logo"],
                supports=tuple(entry["supports"]),
                language=entry["language"],
                recipe=entry["recipe"],
            )
        )
    return runtimes


class RuntimeCatalog:
    """The enabled runtimes: in the catalog, allowed by settings, image available."""

    def __init__(self, runtimes: Iterable[Runtime], allowed: Iterable[str] = (), is_available: Callable[[Runtime], bool] | None = None):
        self._runtimes = list(runtimes)
        self._allowed = set(allowed)
        self._is_available = is_available or (lambda runtime: True)

    def configured(self) -> list[Runtime]:
        """Runtimes the settings enable, available or not."""
        return [r for r in self._runtimes if not self._allowed or r.id in self._allowed]

    def enabled(self) -> list[Runtime]:
        """Runtimes the settings enable and whose image is available."""
        return [r for r in self.configured() if self._is_available(r)]

    def get(self, runtime_id: str) -> Runtime | None:
        return next((r for r in self._runtimes if r.id == runtime_id), None)

    def require_enabled(self, name: str, runtime_id: str) -> Runtime:
        enabled = self.enabled()
        for runtime in enabled:
            if runtime.id == runtime_id:
                return runtime
        raise invalid_argument(name, f"Value must be one of ({', '.join(r.id for r in enabled)})")
