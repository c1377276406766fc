"""The emulator's own plain reading and writing of CPIX 2.3 key documents (no gateway code).

Only what a key-generation endpoint needs: ``CPIX@contentId`` (the resource id), each
``ContentKeyList/ContentKey@kid`` (UUID form), and a key given as
``Data/pskc:Secret/pskc:PlainValue`` (standard base64). The answer is the same document with
every ``ContentKey`` carrying its key; every other element and attribute is kept as it came
(comments and processing instructions are dropped, namespace prefixes are kept).

Parsing uses defusedxml with DTDs (so entity declarations, billion laughs included) and
external references refused before anything is expanded; the body is bounded by the caller.
Errors are 400 ``bad_cpix`` with fixed messages: nothing of the body is ever echoed.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape

import defusedxml
from defusedxml.ElementTree import DefusedXMLParser

from proxy.dev.emulator.errors import EmulatorError

CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
XML_NS = "http://www.w3.org/XML/1998/namespace"
MAX_RESOURCE_ID = 512
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PREFERRED_PREFIXES = {CPIX_NS: "cpix", PSKC_NS: "pskc"}
_ATTR_ENTITIES = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
_TEXT_ENTITIES = {"\r": "&#13;"}


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def _bad(message: str) -> EmulatorError:
    return EmulatorError(400, "bad_cpix", message)


@dataclass
class ContentKey:
    """One ``ContentKey``: its element, key id (32 lowercase hex) and given key, if any."""

    element: ET.Element
    kid: str
    key: bytes | None


@dataclass
class CpixDocument:
    """A parsed CPIX document: the tree, its namespace prefixes and the parts read from it."""

    root: ET.Element
    prefixes: list[tuple[str, str]]
    content_id: str
    content_keys: list[ContentKey]


class _Builder(ET.TreeBuilder):
    """A tree builder that also remembers the namespace prefixes the document declared."""

    def __init__(self) -> None:
        super().__init__()
        self.prefixes: list[tuple[str, str]] = []

    def start_ns(self, prefix: str, uri: str) -> None:
        self.prefixes.append((prefix, uri))


def parse_cpix(body: bytes) -> CpixDocument:
    """Read a CPIX document; 400 ``bad_cpix`` (fixed message) on anything malformed."""
    builder = _Builder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True)
    try:
        parser.feed(body)
        root = parser.close()
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError):
        message = "The CPIX document is not well-formed XML, or uses a DTD or entities."
        raise _bad(message) from None
    if root.tag != _q(CPIX_NS, "CPIX"):
        raise _bad("The document is not a CPIX document (urn:dashif:org:cpix).")
    content_id = (root.get("contentId") or "").strip()
    if not content_id:
        raise _bad("Missing CPIX@contentId.")
    if len(content_id) > MAX_RESOURCE_ID:
        raise _bad(f"CPIX@contentId is longer than {MAX_RESOURCE_ID} characters.")
    elements = root.findall(f"{_q(CPIX_NS, 'ContentKeyList')}/{_q(CPIX_NS, 'ContentKey')}")
    if not elements:
        raise _bad("The CPIX document has no ContentKeyList/ContentKey.")
    keys = [_content_key(number, element) for number, element in enumerate(elements, start=1)]
    return CpixDocument(root, builder.prefixes, content_id, keys)


def _content_key(number: int, element: ET.Element) -> ContentKey:
    kid = element.get("kid") or ""
    if not _UUID.fullmatch(kid):
        raise _bad(f"ContentKey #{number}: @kid is missing or not a UUID.")
    data = element.find(_q(CPIX_NS, "Data"))
    if data is None:
        return ContentKey(element, kid.replace("-", "").lower(), None)
    value = data.find(f"{_q(PSKC_NS, 'Secret')}/{_q(PSKC_NS, 'PlainValue')}")
    if value is None:
        raise _bad(f"ContentKey #{number}: Data holds no pskc:Secret/pskc:PlainValue.")
    try:
        key = base64.b64decode("".join((value.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 16:
        raise _bad(f"ContentKey #{number}: PlainValue is not 16 bytes of base64.")
    return ContentKey(element, kid.replace("-", "").lower(), key)


def fill_cpix(document: CpixDocument, keys: Mapping[str, bytes]) -> bytes:
    """The document with every ContentKey lacking Data given ``keys[kid]``, as UTF-8 XML."""
    for content_key in document.content_keys:
        if content_key.key is not None:
            continue
        data = ET.Element(_q(CPIX_NS, "Data"))
        secret = ET.SubElement(data, _q(PSKC_NS, "Secret"))
        plain = ET.SubElement(secret, _q(PSKC_NS, "PlainValue"))
        plain.text = base64.b64encode(keys[content_key.kid]).decode("ascii")
        content_key.element.insert(0, data)
    return serialize(document.root, document.prefixes)


def with_plain_keys(root: ET.Element, key_for: Callable[[uuid.UUID], bytes]) -> bytes:
    """``root`` (a CPIX document whose ContentKey kids are UUIDs) with each ContentKey's
    Data replaced by ``pskc:Secret/pskc:PlainValue`` holding ``key_for(kid)``, as UTF-8 XML
    with its declaration (ElementTree's prefixes: register cpix and pskc to keep them)."""
    for element in root.iter(_q(CPIX_NS, "ContentKey")):
        for old in element.findall(_q(CPIX_NS, "Data")):
            element.remove(old)
        data = ET.SubElement(element, _q(CPIX_NS, "Data"))
        secret = ET.SubElement(data, _q(PSKC_NS, "Secret"))
        value = ET.SubElement(secret, _q(PSKC_NS, "PlainValue"))
        value.text = base64.b64encode(key_for(uuid.UUID(element.get("kid", "")))).decode()
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def serialize(root: ET.Element, prefixes: list[tuple[str, str]]) -> bytes:
    """``root`` as an XML document, namespaces declared on it with the prefixes it came with.

    Iterative (a deeply nested document cannot exhaust the stack); no default namespace is
    declared, so an element without a namespace stays without one.
    """
    names = _Names(prefixes)
    for element in root.iter():
        names.qname(element.tag)
        for attribute in element.attrib:
            names.qname(attribute)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    stack: list[tuple[ET.Element, bool]] = [(root, False)]
    while stack:
        element, closing = stack.pop()
        tag = names.qname(element.tag)
        if closing:
            out.append(f"</{tag}>{_text(element.tail)}")
            continue
        attributes = names.declarations() if element is root else ""
        attributes += "".join(
            f' {names.qname(name)}="{escape(value, _ATTR_ENTITIES)}"'
            for name, value in element.attrib.items()
        )
        if not len(element) and not element.text:
            out.append(f"<{tag}{attributes}/>{_text(element.tail)}")
            continue
        out.append(f"<{tag}{attributes}>{_text(element.text)}")
        stack.append((element, True))
        stack.extend((child, False) for child in reversed(element))
    return "".join(out).encode("utf-8")


def _text(text: str | None) -> str:
    return escape(text, _TEXT_ENTITIES) if text else ""


class _Names:
    """Namespace URI -> prefix, from the document's own declarations where possible."""

    def __init__(self, declared: list[tuple[str, str]]) -> None:
        self._prefix: dict[str, str] = {XML_NS: "xml"}
        self._used = {"xml", "xmlns"}
        for prefix, uri in declared:
            if prefix and uri not in self._prefix and prefix not in self._used:
                self._assign(uri, prefix)

    def _assign(self, uri: str, prefix: str) -> str:
        self._prefix[uri] = prefix
        self._used.add(prefix)
        return prefix

    def _prefix_for(self, uri: str) -> str:
        if uri in self._prefix:
            return self._prefix[uri]
        preferred = _PREFERRED_PREFIXES.get(uri)
        if preferred and preferred not in self._used:
            return self._assign(uri, preferred)
        number = 0
        while f"ns{number}" in self._used:
            number += 1
        return self._assign(uri, f"ns{number}")

    def qname(self, name: str) -> str:
        if not name.startswith("{"):
            return name
        uri, _, local = name[1:].partition("}")
        return f"{self._prefix_for(uri)}:{local}"

    def declarations(self) -> str:
        return "".join(
            f' xmlns:{prefix}="{escape(uri, _ATTR_ENTITIES)}"'
            for uri, prefix in self._prefix.items()
            if uri != XML_NS
        )
