"""The request fields that constrain the output, turned into one StructuredOutputsParams.

Three spellings reach the same engine feature: OpenAI's `response_format` (`text`, `json_object`,
`json_schema`), vLLM's `structured_outputs` ({json | regex | choice | grammar | json_object}) and
vLLM's older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`. A request may use one
of them; a bad value is a 400 naming the field the client sent. The grammar itself is compiled by
the engine (a spec that does not compile is a 400 from add_request).
"""

from __future__ import annotations

from typing import Any

from nanoserve.errors import InvalidRequestError
from nanoserve.sampling_params import StructuredOutputsParams
from nanoserve.server.errors import APIError

# vLLM's structured_outputs options that only restate what we always do (no fallback to another
# backend, no free whitespace, no properties beyond the schema's): accepted when true or false.
_ACCEPTED_OPTIONS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}


def structured_outputs_of(body: Any) -> StructuredOutputsParams | None:
    """The constraint a completions or chat request asks for (None: free text)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if body.response_format is not None:
        fields = _from_response_format(body.response_format)
        if fields is not None:
            found.append(("response_format", fields))
    if body.structured_outputs is not None:
        fields = dict(body.structured_outputs)
        for option in _ACCEPTED_OPTIONS:
            if not isinstance(fields.pop(option, False), bool):
                raise APIError(400, f"structured_outputs.{option} must be a boolean.", "structured_outputs")
        found.append(("structured_outputs", fields))
    for field, kind in _GUIDED.items():
        value = getattr(body, field)
        if value is not None:
            found.append((field, {kind: value}))
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise APIError(400, f"Only one way of constraining the output may be given; got {names}.",
                       found[1][0])
    param, fields = found[0]
    known = {"json", "regex", "choice", "grammar", "json_object"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise APIError(400, f"{param} has unsupported fields {unknown}; supported: {sorted(known)}.", param)
    try:
        return StructuredOutputsParams(**fields)
    except InvalidRequestError as e:
        raise APIError(400, e.message.replace("structured_outputs", param), param) from e


def _from_response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's response_format as structured_outputs fields (None: plain text)."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise APIError(400, "response_format.json_schema must be an object with a 'schema'.",
                           "response_format")
        schema = spec.get("schema", spec.get("json_schema"))
        if schema is None:  # a named format without a schema: any JSON object
            return {"json_object": True}
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object.",
                           "response_format")
        return {"json": schema}
    raise APIError(400, f"response_format.type must be 'text', 'json_object' or 'json_schema'; got {kind!r}.",
                   "response_format")
