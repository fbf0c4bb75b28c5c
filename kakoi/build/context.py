"""The build context: .dockerignore matching, source lookup and content hashing for the cache.

.dockerignore follows Docker's rules (moby/patternmatcher): one pattern a line, `#` starts a
comment line, each pattern is cleaned as a path with a leading `/` dropped, `*` and `?` never
cross a `/`, `**` matches any number of directories, and a line starting with `!` re-includes
what an earlier line excluded; the last matching line wins. A pattern that matches a directory
excludes everything below it. As in Docker, the Dockerfile and .dockerignore are read even
when ignored, but COPY and ADD do not see them then.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat

IGNORE_FILE = ".dockerignore"


class IgnoreRule:
    """One .dockerignore line, compiled."""

    def __init__(self, pattern: str, exclusion: bool):
        self.pattern = pattern
        self.exclusion = exclusion
        self.regex = re.compile(_translate(pattern))
        self.depth = pattern.count("/")

    def matches(self, path: str) -> bool:
        if self.regex.fullmatch(path):
            return True
        # A pattern also matches every path below a directory that it matches.
        parts = path.split("/")
        return any(self.regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts)))


def _translate(pattern: str) -> str:
    """Return a regular expression for a Go filepath.Match pattern extended with `**`."""
    result = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                result.append("(?:.*/)?")
            else:
                result.append(".*")
            continue
        if char == "*":
            result.append("[^/]*")
        elif char == "?":
            result.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                result.append(re.escape(char))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                body = body.replace("\\", "\\\\")
                result.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            result.append(re.escape(pattern[i]))
        else:
            result.append(re.escape(char))
        i += 1
    return "".join(result)


def parse_ignore(text: str) -> list[IgnoreRule]:
    """Compile the lines of a .dockerignore file."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        pattern = posixpath.normpath(line).lstrip("/")
        if pattern in ("", "."):
            continue
        rules.append(IgnoreRule(pattern, exclusion))
    return rules


class Context:
    """A build context directory and its .dockerignore rules; None as directory means none."""

    def __init__(self, directory: str | None, rules: list[IgnoreRule] | None = None):
        self.directory = os.path.realpath(directory) if directory is not None else None
        self.rules = rules or []

    @classmethod
    def open(cls, directory: str | None) -> Context:
        if directory is None:
            return cls(None)
        try:
            with open(os.path.join(directory, IGNORE_FILE), encoding="utf-8") as file:
                rules = parse_ignore(file.read())
        except FileNotFoundError:
            rules = []
        return cls(directory, rules)

    def ignored(self, path: str) -> bool:
        """Return whether the context-relative path is excluded by .dockerignore."""
        excluded = False
        for rule in self.rules:
            if excluded == rule.exclusion and rule.matches(path):
                excluded = not rule.exclusion
        return excluded

    def resolve(self, source: str) -> tuple[str, str] | None:
        """Return (relative, host path) of a source, or None when it escapes the context."""
        relative = posixpath.normpath("/" + source.replace(os.sep, "/")).lstrip("/")
        cleaned = posixpath.normpath(source)
        if cleaned == ".." or cleaned.startswith("../") or cleaned.startswith("/.."):
            return None
        if not relative:
            return "", self.directory
        path = os.path.join(self.directory, relative) if relative else self.directory
        # The parents of the source must stay inside the context after following
        # symlinks; the source itself may be a symlink, whose target the caller checks.
        parent = os.path.realpath(os.path.dirname(path))
        if parent != self.directory and not parent.startswith(self.directory + os.sep):
            return None
        return relative, path

    def glob(self, pattern: str) -> list[str]:
        """Return the context-relative paths matching a COPY source pattern, sorted."""
        import glob

        relative = posixpath.normpath("/" + pattern).lstrip("/")
        found = glob.glob(relative, root_dir=self.directory, include_hidden=True)
        return sorted(path for path in found if not self.ignored(path))

    def walk(self, relative: str) -> list[str]:
        """Return the relative paths below a directory (not ignored), parents first, sorted."""
        result = []
        base = os.path.join(self.directory, relative) if relative else self.directory
        for current, directories, files in os.walk(base):
            directories.sort()
            rel_current = os.path.relpath(current, self.directory)
            rel_current = "" if rel_current == "." else rel_current
            for name in sorted(directories + files):
                path = posixpath.join(rel_current, name) if rel_current else name
                if not self.ignored(path) or self._has_exception_below(path):
                    result.append(path)
            directories[:] = [name for name in directories
                              if not self.ignored(posixpath.join(rel_current, name)
                                                  if rel_current else name)
                              or self._has_exception_below(posixpath.join(rel_current, name)
                                                           if rel_current else name)]
        return result

    def _has_exception_below(self, path: str) -> bool:
        # An excluded directory is still walked when a `!` rule may re-include a file in it.
        return any(rule.exclusion and rule.pattern.startswith(path + "/")
                   or rule.exclusion and "**" in rule.pattern for rule in self.rules)


def hash_tree(entries: list[tuple[str, str]]) -> str:
    """Hash (name in the layer, host path) pairs: names, content, mode, owner, link targets.

    Modification times are left out, as Docker does, so that a fresh checkout of the same
    files hits the cache.
    """
    from kakoi.build.cache import sha256

    infos = [os.lstat(path) for _, path in entries]
    hasher = sha256(sum(info.st_size for info in infos if stat.S_ISREG(info.st_mode)))
    for (name, path), info in zip(entries, infos):
        hasher.update(f"{name}\0{stat.S_IMODE(info.st_mode):o}\0{stat.S_IFMT(info.st_mode)}"
                      f"\0{info.st_uid}:{info.st_gid}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            hasher.update(os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    hasher.update(chunk)
        hasher.update(b"\0")
    return hasher.hexdigest()
