"""A mkdocs hook: the repository's BENCHMARKS.md and RELIABILITY.md become pages of the site, next to speed.md.

The pages moved out of the README link to them (``[BENCHMARKS.md](BENCHMARKS.md)``); serving the files from the
repository root keeps one copy of each, and the links resolve under ``mkdocs build --strict``.
"""

from __future__ import annotations

import os

from mkdocs.structure.files import File

ROOT_PAGES = ("BENCHMARKS.md", "RELIABILITY.md")


def on_files(files, config, **kwargs):
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    for name in ROOT_PAGES:
        if files.get_file_from_path(name) is None:
            files.append(File(name, src_dir=root, dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
