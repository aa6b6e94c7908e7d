"""The caps.yaml (version 1) loader: text in, a CapsConfig or every problem out.

Nothing but CapsError escapes `parse_caps` and `load_caps`. Each problem names file,
line and column (1-based, from the YAML node marks) and what was expected.
"""

from __future__ import annotations

import gc
import re
from os import PathLike

import yaml

from capgate.caps.errors import CapsError, Problem
from capgate.caps.files import MAX_CAPS_BYTES, FileRefused, read_config_text
from capgate.caps.globs import Glob, compile_glob
from capgate.caps.hosts import parse_host_pattern
from capgate.caps.model import Capability, CapsConfig, Role, Unmatched
from capgate.caps.transformloader import NAME, TransformReader
from capgate.caps.yamlnodes import Entries, NodeReader

_METHOD = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
_SCHEMES = ("https", "http")


def load_caps(path: str | PathLike[str]) -> CapsConfig:
    """Read and parse a caps.yaml file; CapsError lists every problem."""
    name = str(path)
    try:
        text = read_config_text(path, MAX_CAPS_BYTES)
    except FileRefused as exc:
        raise CapsError([Problem(name, 1, 1, str(exc))]) from None
    return parse_caps(text, name)


def parse_caps(text: str, filename: str = "caps.yaml") -> CapsConfig:
    """Parse caps.yaml text; CapsError lists every problem found in it."""
    reader = NodeReader(filename)
    config = None
    # The YAML node tree is large and acyclic; the cyclic collector only slows composing
    # it (measured: 10,000 capabilities compose in 0.85 s without collection, 3.2 s with).
    collecting = gc.isenabled()
    gc.disable()
    try:
        root = reader.compose(text)
        if root is not None:
            config = _Loader(reader).config(root)
    except RecursionError:
        reader.problem(None, "caps file nested too deeply")
    except Exception as exc:  # the loader's contract: only CapsError escapes
        reader.problem(None, f"internal error while loading the caps file ({type(exc).__name__})")
    finally:
        if collecting:
            gc.enable()
    if reader.problems or config is None:
        raise CapsError(reader.problems or [Problem(filename, 1, 1, "no configuration")])
    return config


class _Loader:
    """Walks the document; each method reads one part of the schema."""

    def __init__(self, reader: NodeReader) -> None:
        self.r = reader
        self.t = TransformReader(reader)
        # Names of every capability written, valid or not, so that a role naming a broken
        # capability is not also reported as naming an unknown one.
        self.declared: set[str] = set()

    def config(self, root: yaml.Node) -> CapsConfig | None:
        entries = self.r.mapping(root, "caps file")
        if entries is None:
            return None
        self.r.check_keys(
            root,
            entries,
            "caps file",
            ("version", "defaults", "capabilities", "roles"),
            required=("version",),
        )
        version = self._version(entries)
        unmatched = self._unmatched(entries)
        capabilities = self._capabilities(entries)
        roles = self._roles(entries, self.declared)
        return CapsConfig(version or 1, unmatched, tuple(capabilities), roles, self.r.filename)

    def _version(self, entries: Entries) -> int | None:
        if "version" not in entries:
            return None
        node = entries["version"][1]
        version = self.r.integer(node, "version")
        if version is not None and version != 1:
            self.r.problem(node, f"unsupported version {version}; expected 1")
        return version

    def _unmatched(self, entries: Entries) -> Unmatched:
        if "defaults" not in entries:
            return "deny"
        node = entries["defaults"][1]
        defaults = self.r.mapping(node, "defaults")
        if defaults is None:
            return "deny"
        self.r.check_keys(node, defaults, "defaults", ("unmatched",))
        if "unmatched" not in defaults:
            return "deny"
        value_node = defaults["unmatched"][1]
        value = self.r.string(value_node, "defaults.unmatched")
        if value == "allow":
            return "allow"
        if value != "deny" and value is not None:
            self.r.problem(value_node, f"defaults.unmatched: expected deny or allow, not {value!r}")
        return "deny"

    # --- capabilities --------------------------------------------------------------------

    def _capabilities(self, entries: Entries) -> list[Capability]:
        if "capabilities" not in entries:
            return []
        items = self.r.sequence(entries["capabilities"][1], "capabilities")
        capabilities: list[Capability] = []
        first_line: dict[str, int] = {}
        for item in items or []:
            capability = self._capability(item, len(capabilities))
            if capability is None:
                continue
            if capability.name in first_line:
                self.r.problem(
                    item,
                    f"duplicate capability name '{capability.name}' "
                    f"(first defined at line {first_line[capability.name]})",
                )
                continue
            first_line[capability.name] = capability.line
            capabilities.append(capability)
        return capabilities

    def _capability(self, node: yaml.Node, index: int) -> Capability | None:
        entries = self.r.mapping(node, "capability")
        if entries is None:
            return None
        self.r.check_keys(
            node,
            entries,
            "capability",
            ("name", "match", "allow_plaintext", "transforms"),
            required=("name", "match"),
        )
        name = self.t.name(entries, "name", "capability name")
        if name is not None:
            self.declared.add(name)
        where = f"capability '{name}'" if name else "capability"
        allow_plaintext = False
        if "allow_plaintext" in entries:
            allow_plaintext = bool(self.r.boolean(entries["allow_plaintext"][1], "allow_plaintext"))
        match = self._match(entries, where, allow_plaintext)
        transforms = self.t.transforms(entries, where)
        if name is None or match is None or transforms is None:
            return None
        hosts, schemes, methods, paths, patterns = match
        return Capability(
            name=name,
            index=index,
            line=node.start_mark.line + 1,
            hosts=hosts,
            schemes=schemes,
            methods=methods,
            paths=paths,
            allow_plaintext=allow_plaintext,
            transforms=transforms,
            path_patterns=patterns,
        )

    def _match(self, entries: Entries, where: str, allow_plaintext: bool) -> tuple | None:
        if "match" not in entries:
            return None
        node = entries["match"][1]
        match = self.r.mapping(node, f"{where} match")
        if match is None:
            return None
        self.r.check_keys(
            node,
            match,
            f"{where} match",
            ("hosts", "schemes", "methods", "paths"),
            required=("hosts",),
        )
        before = len(self.r.problems)
        hosts = self._hosts(match, where)
        schemes = self._schemes(match, where, allow_plaintext)
        methods = self._methods(match, where)
        paths = self._paths(match, where)
        if len(self.r.problems) > before or not hosts:
            return None
        return hosts, schemes, methods, tuple(g for g, _ in paths), tuple(p for _, p in paths)

    def _hosts(self, match: Entries, where: str) -> tuple:
        if "hosts" not in match:
            return ()
        items = self.r.string_list(match["hosts"][1], f"{where} hosts", required=True) or []
        hosts = []
        for text, item in items:
            try:
                hosts.append(parse_host_pattern(text))
            except ValueError as exc:
                self.r.problem(item, str(exc))
        return tuple(hosts)

    def _schemes(self, match: Entries, where: str, allow_plaintext: bool) -> tuple[str, ...]:
        if "schemes" not in match:
            return ("https",)
        schemes = []
        for text, item in self.r.string_list(match["schemes"][1], f"{where} schemes") or []:
            scheme = text.lower()
            if scheme not in _SCHEMES:
                self.r.problem(item, f"unknown scheme {text!r}; expected https or http")
            elif scheme == "http" and not allow_plaintext:
                self.r.problem(
                    item,
                    f"{where}: scheme http needs allow_plaintext: true (credentials and "
                    "secrets would cross the network unencrypted)",
                )
            else:
                schemes.append(scheme)
        return tuple(dict.fromkeys(schemes))

    def _methods(self, match: Entries, where: str) -> tuple[str, ...]:
        if "methods" not in match:
            return ()
        methods = []
        for text, item in self.r.string_list(match["methods"][1], f"{where} methods") or []:
            if not _METHOD.fullmatch(text.upper()):
                self.r.problem(item, f"bad HTTP method {text!r}; expected a name such as GET")
            else:
                methods.append(text.upper())
        return tuple(dict.fromkeys(methods))

    def _paths(self, match: Entries, where: str) -> list[tuple[str, Glob]]:
        if "paths" not in match:
            return []
        paths = []
        for text, item in self.r.string_list(match["paths"][1], f"{where} paths") or []:
            try:
                paths.append((text, compile_glob(text)))
            except ValueError as exc:
                self.r.problem(item, str(exc))
        return paths

    # --- roles ---------------------------------------------------------------------------

    def _roles(self, entries: Entries, known: set[str]) -> dict[str, Role]:
        if "roles" not in entries:
            return {}
        roles_node = entries["roles"][1]
        roles_map = self.r.mapping(roles_node, "roles")
        roles: dict[str, Role] = {}
        for name, (key, node) in (roles_map or {}).items():
            if not NAME.fullmatch(name):
                self.r.problem(
                    key, f"role name {name!r}: expected letters, digits, '_', '.', ':' or '-'"
                )
                continue
            role = self._role(name, node, known)
            if role is not None:
                roles[name] = role
        return roles

    def _role(self, name: str, node: yaml.Node, known: set[str]) -> Role | None:
        where = f"role '{name}'"
        fields = self.r.mapping(node, where)
        if fields is None:
            return None
        self.r.check_keys(node, fields, where, ("capabilities",), required=("capabilities",))
        if "capabilities" not in fields:
            return None
        items = self.r.sequence(fields["capabilities"][1], f"{where} capabilities") or []
        names: dict[str, None] = {}  # ordered, with O(1) membership
        for item in items:
            capability = self.r.string(item, f"{where} capabilities")
            if capability is None:
                continue
            if capability not in known:
                self.r.problem(item, f"{where} names unknown capability '{capability}'")
            elif capability in names:
                self.r.problem(item, f"{where} lists capability '{capability}' twice")
            else:
                names[capability] = None
        return Role(name, tuple(names))
