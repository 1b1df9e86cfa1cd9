"""Derive a test copy of twilio_api_v2010.json for Prism (the original stays untouched):
 1. declare form `encoding` (style=form, explode=true) for every array field of every
    x-www-form-urlencoded request body, so Prism accepts StatusCallbackEvent, MediaUrl, ...;
 2. add Twilio-shaped 429/500/503 responses to POST Calls.json and Messages.json,
    so the request header `Prefer: code=429` (etc.) returns them.
usage: python make_test_spec.py twilio_api_v2010.json twilio_api_v2010.test.json
(From shared/twilio/README.md, reference material meant for this.)"""
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    spec = json.load(f)

for path_item in spec["paths"].values():
    for op in path_item.values():
        if not isinstance(op, dict):
            continue
        form = op.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded")
        if form:
            props = form.get("schema", {}).get("properties", {})
            arrays = [name for name, schema in props.items() if schema.get("type") == "array"]
            if arrays:
                form.setdefault("encoding", {}).update(
                    {name: {"style": "form", "explode": True} for name in arrays})

ERROR_SCHEMA = {"type": "object", "properties": {
    "code": {"type": "integer"}, "message": {"type": "string"},
    "more_info": {"type": "string"}, "status": {"type": "integer"}}}
ERRORS = {  # HTTP status -> (Twilio error code, message); add "400" only if you accept the caveat in the README
    "429": (20429, "Too Many Requests"),
    "500": (20500, "Internal Server Error"),
    "503": (20503, "Service Unavailable"),
}
for path in ("/2010-04-01/Accounts/{AccountSid}/Calls.json",
             "/2010-04-01/Accounts/{AccountSid}/Messages.json"):
    responses = spec["paths"][path]["post"]["responses"]
    for status, (code, message) in ERRORS.items():
        responses[status] = {"description": message, "content": {"application/json": {
            "schema": ERROR_SCHEMA,
            "example": {"code": code, "message": message, "status": int(status),
                        "more_info": f"https://www.twilio.com/docs/errors/{code}"}}}}

with open(dst, "w") as f:
    json.dump(spec, f)
