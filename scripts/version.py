"""The project's version, as setup.cfg declares it, for the scripts' --version."""

from __future__ import annotations

import argparse
import configparser
from importlib import metadata
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
DISTRIBUTION = "mastodon-aws"


def version() -> str:
    """setup.cfg's version (the checkout's), else the installed distribution's."""
    config = configparser.ConfigParser()
    if config.read(SETUP_CFG) and config.has_option("metadata", "version"):
        return config.get("metadata", "version")
    return metadata.version(DISTRIBUTION)


def version_action() -> type[argparse.Action]:
    """An argparse action for --version that prints "<prog> <version> (Mastodon vX.Y.Z pinned)"."""

    class Version(argparse.Action):
        def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                             help=str(kwargs.get("help") or "print the version and exit"))

        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            from templates.options import BuildOptions

            print(f"{parser.prog} {version()} (mastodon-aws; pins Mastodon {BuildOptions.mastodon_version})")
            parser.exit()

    return Version
