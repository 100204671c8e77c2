"""The runtime catalog: data in runtimes/catalog.toml, filtered by settings.

Each runtime names a language; `runtimes/<language>/language.toml` says how
containers of that language run code (the runtime server's command) and
build it (the build command, and which files declare dependencies to fetch).
A language without that file has no runtime server here: its runtimes are
catalog data only.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from server.domain.errors import invalid_argument

_API_FIELDS = ("id", "name", "version", "base", "image", "logo", "supports")
ALL = "all"  # FUNCTIONS_RUNTIMES: every runtime that has an image (a recipe or an override)


@dataclass(frozen=True)
class Language:
    """How containers of one language run and build code (`language.toml`)."""

    name: str
    server: tuple[str, ...] = ()  # argv of the runtime server, inside the container
    build: tuple[str, ...] = ()  # argv of the build, inside the build container
    manifests: frozenset[str] = frozenset()  # files at the archive root that declare dependencies to fetch

    _KEYS = frozenset({"server", "build", "manifests", "needs"})

    @classmethod
    def load(cls, runtimes_dir: Path, name: str) -> "Language":
        """The language's file; a language without one has no server (nothing runs)."""
        path = runtimes_dir / name / "language.toml"
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return cls(name)
        unknown = set(data) - cls._KEYS
        if unknown:
            raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        return cls(name, tuple(data.get("server", ())), tuple(data.get("build", ())), frozenset(data.get("manifests", ())))


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
    recipe: str  # the directory under runtimes/ that builds the image; "" for catalog data only
    server: tuple[str, ...] = ()  # from the language
    build: tuple[str, ...] = ()
    manifests: frozenset[str] = field(default_factory=frozenset)

    @property
    def has_image(self) -> bool:
        """Built here from a recipe, or pointed at an image by the operator."""
        return bool(self.image)


def load_catalog(path: Path, image_overrides: dict[str, str] | None = None) -> list[Runtime]:
    """The catalog's runtimes. Entries without a recipe (data only) get an
    image only from `image_overrides`."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    languages: dict[str, Language] = {}
    runtimes = []
    for entry in data.get("runtime", []):
        missing = [f for f in _API_FIELDS + ("language",) if f not in entry]
        if missing:
            raise ValueError(f"{path}: runtime {entry.get('id', '?')} lacks {', '.join(missing)}")
        recipe = entry.get("recipe", "")
        image = (image_overrides or {}).get(entry["id"], entry["image"] if recipe else "")
        if entry["language"] not in languages:
            languages[entry["language"]] = Language.load(Path(path).parent, entry["language"])
        language = languages[entry["language"]]
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
                recipe=recipe,
                server=language.server,
                build=language.build,
                manifests=language.manifests,
            )
        )
    return runtimes


def selected(runtime: Runtime, allowed: set[str]) -> bool:
    """FUNCTIONS_RUNTIMES: runtime IDs and language names, or `all`; empty
    means all. Only runtimes with an image and a server can be selected."""
    if not runtime.has_image or not runtime.server:
        return False
    return not allowed or ALL in allowed or runtime.id in allowed or runtime.language in allowed


class RuntimeCatalog:
    """The enabled runtimes: in the catalog, allowed by settings, image available."""

    def __init__(self, runtimes: Iterable[Runtime], allowed: Iterable[str] = (), is_available: Callable[[Runtime], bool] | None = None):
        self._runtimes = list(runtimes)
        self._allowed = set(allowed)
        self._is_available = is_available or (lambda runtime: True)

    def configured(self) -> list[Runtime]:
        """Runtimes the settings enable, available or not."""
        return [r for r in self._runtimes if selected(r, self._allowed)]

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
