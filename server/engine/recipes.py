"""Recipes of runtime images: `runtimes/<recipe>/recipe.toml`.

A recipe is either a *root* (`suite`: a Debian suite bootstrapped from
scratch, e.g. `runtimes/base/bookworm`) or a *layer* on top of another
recipe (`base`: that recipe's directory): the Debian packages it installs
and the binaries it takes from a package registry (PyPI, npm). Every runtime
of a suite is a layer on the suite's base, so ten runtimes share one Debian
root in Docker's layer store instead of costing ten.

A recipe's digest covers its own file, its base's digest and the builder's
version: editing either file makes the images built from it stale.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the build changes in a way that changes the images, so existing
# images no longer count as built from the current recipe.
IMAGE_BUILDER_VERSION = "2"
BASE_IMAGE_REPOSITORY = "functions-runtime/base"
REGISTRIES = ("pypi", "npm")


class RecipeError(Exception):
    """A recipe file is missing or wrong."""


@dataclass(frozen=True)
class Binary:
    """One file taken from a registry package: `file` inside the wheel (PyPI)
    or the package tarball (npm), installed at `install` (mode 0755)."""

    registry: str  # "pypi" or "npm"
    package: str  # a pinned requirement: "deno==2.9.8", "@oven/bun-linux-x64@1.4.5"
    file: str
    install: str

    @classmethod
    def parse(cls, path: Path, raw: dict) -> "Binary":
        missing = {"registry", "package", "file", "install"} - set(raw)
        if missing or set(raw) - {"registry", "package", "file", "install"}:
            raise RecipeError(f"{path}: a [[binary]] needs exactly registry, package, file and install")
        if raw["registry"] not in REGISTRIES:
            raise RecipeError(f"{path}: binary registry {raw['registry']!r} is not one of {', '.join(REGISTRIES)}")
        install = PurePosixPath(raw["install"])
        if not install.is_absolute() or ".." in install.parts:
            raise RecipeError(f"{path}: binary install path {raw['install']!r} must be absolute")
        return cls(raw["registry"], raw["package"], raw["file"], str(install))


@dataclass(frozen=True)
class Recipe:
    """A parsed `recipe.toml`: a root (`suite`) or a layer over `base`."""

    path: Path
    name: str  # the recipe's directory under runtimes/, e.g. "php-8.2" or "base/bookworm"
    digest: str
    packages: tuple[str, ...]
    suite: str = ""  # roots only
    mirror: str = DEFAULT_MIRROR
    base: "Recipe | None" = None  # layers only
    binaries: tuple[Binary, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()

    _KEYS = frozenset({"suite", "base", "packages", "mirror", "env", "remove", "binary"})

    @property
    def is_layer(self) -> bool:
        return self.base is not None

    @property
    def base_image(self) -> str:
        """The tag of this root's image when it serves as a base."""
        return f"{BASE_IMAGE_REPOSITORY}:{self.name.rsplit('/', 1)[-1]}"

    @classmethod
    def load(cls, runtimes_dir: Path, name: str, _seen: tuple[str, ...] = ()) -> "Recipe":
        path = Path(runtimes_dir) / name / "recipe.toml"
        try:
            raw = path.read_bytes()
            data = tomllib.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"{path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: {exc}") from exc
        unknown = set(data) - cls._KEYS
        if unknown:
            raise RecipeError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
        if bool(data.get("suite")) == bool(data.get("base")):
            raise RecipeError(f"{path}: exactly one of `suite` (a root) and `base` (a layer) is required")
        binaries = tuple(Binary.parse(path, b) for b in data.get("binary", ()))
        if data.get("suite") and not data.get("packages"):
            raise RecipeError(f"{path}: a root needs `packages`")
        if data.get("base") and not (data.get("packages") or binaries):
            raise RecipeError(f"{path}: a layer needs `packages` or a [[binary]]")
        base = None
        if data.get("base"):
            if data["base"] in _seen + (name,):
                raise RecipeError(f"{path}: base {data['base']!r} loops")
            base = cls.load(runtimes_dir, data["base"], _seen + (name,))
            if base.is_layer:
                raise RecipeError(f"{path}: base {data['base']!r} must be a root (`suite`), not a layer")
        hashed = hashlib.sha256(f"builder {IMAGE_BUILDER_VERSION}\n".encode())
        hashed.update(f"base {base.digest if base else ''}\n".encode())
        hashed.update(raw)
        return cls(
            path=path,
            name=name,
            digest=hashed.hexdigest(),
            packages=tuple(data.get("packages", ())),
            suite=data.get("suite", ""),
            mirror=data.get("mirror", base.mirror if base else DEFAULT_MIRROR),
            base=base,
            binaries=binaries,
            env={str(k): str(v) for k, v in data.get("env", {}).items()},
            remove=tuple(data.get("remove", ())),
        )
