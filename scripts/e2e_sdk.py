#!/usr/bin/env python3
"""End-to-end check of mixpeek-proxy with the official Mixpeek Python SDK (mixpeek==1.3.783).

Run by scripts/e2e.sh against a real `mixpeek-proxy serve` in front of a real
`mixpeek-proxy fake-upstream`:

    python3 scripts/e2e_sdk.py --proxy http://127.0.0.1:PORT --data-dir DIR --binary BIN

Every check is named and counted; a failure is printed and the run goes on. The last line is
`e2e: N passed, M failed`, and the exit status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

REQUEST_TIMEOUT = 15.0  # seconds, for every HTTP call
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # W3C Trace Context's example
COMMAND_TIMEOUT = 60.0  # seconds, for every `mixpeek-proxy audit ...` run


class CheckFailed(Exception):
    pass


def expect(condition, why: str) -> None:
    if not condition:
        raise CheckFailed(why)


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, body) -> bool:
        try:
            body()
        except CheckFailed as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return False
        except Exception as e:  # an unexpected exception is a failure too, with its story
            self.failed += 1
            detail = "".join(traceback.format_exception_only(type(e), e)).strip().replace("\n", " | ")
            print(f"FAIL {name}: unexpected {detail}", flush=True)
            return False
        self.passed += 1
        print(f"PASS {name}", flush=True)
        return True


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def header(response, name: str):
    """A response header, case-insensitively, from an ApiResponse or an SDK exception."""
    headers = getattr(response, "headers", None) or {}
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return value
    return None


def wait_healthy(proxy: str, deadline_seconds: float = 30.0) -> bool:
    end = time.monotonic() + deadline_seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(proxy + "/_proxy/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy", required=True, help="the proxy's base URL, http://127.0.0.1:PORT")
    parser.add_argument("--data-dir", required=True, help="the proxy's --data-dir")
    parser.add_argument("--binary", required=True, help="the mixpeek-proxy executable")
    parser.add_argument("--log", action="append", default=[],
                        help="a file the proxy logs to (repeatable): checked for secrets too")
    args = parser.parse_args()
    proxy = args.proxy.rstrip("/")

    import mixpeek
    from mixpeek.exceptions import (
        ApiException,
        ForbiddenException,
        NotFoundException,
        UnauthorizedException,
        UnprocessableEntityException,
    )
    from mixpeek.models.api_key_create_request import APIKeyCreateRequest
    from mixpeek.models.api_key_create_response import APIKeyCreateResponse
    from mixpeek.models.api_key_model import APIKeyModel
    from mixpeek.models.api_key_update_request import APIKeyUpdateRequest
    from mixpeek.models.error_response import ErrorResponse
    from mixpeek.models.generic_success_response import GenericSuccessResponse

    checks = Checks()

    token = "sk_e2e_" + secrets.token_hex(20)  # its own organisation in the fake
    bad_token = "not_a_mixpeek_key_" + secrets.token_hex(12)
    user = "e2e.alice@example.com"
    name = "e2e-key-" + secrets.token_hex(3)

    def client_for(access_token):
        configuration = mixpeek.Configuration(host=proxy)
        if access_token is not None:
            configuration.access_token = access_token
        return mixpeek.OrganizationAPIKeysApi(mixpeek.ApiClient(configuration))

    api = client_for(token)
    t = {"_request_timeout": REQUEST_TIMEOUT}

    # What the script did, in order: (action, user_email, key_name, outcome).
    mutations: list[tuple[str, str, str | None, str]] = []
    # Every plaintext secret seen: none may reach the data dir.
    forbidden = {"bearer token": token, "invalid bearer token": bad_token}
    state: dict = {}

    def keys_of(listing) -> list[dict]:
        expect(isinstance(listing, dict), f"list returned {type(listing).__name__}, expected dict")
        keys = listing.get("keys")
        expect(isinstance(keys, list), f"list body has no 'keys' array: {json.dumps(listing)[:300]}")
        return keys

    def active(listing, key_name):
        return [k for k in keys_of(listing) if k.get("name") == key_name and k.get("status") != "revoked"]

    def error_shape(exc, status: int, cls) -> None:
        expect(isinstance(exc, cls), f"raised {type(exc).__name__}, expected {cls.__name__}")
        expect(exc.status == status, f".status is {exc.status!r}, expected {status}")
        try:
            body = json.loads(exc.body or "")
        except ValueError:
            raise CheckFailed(f"error body is not JSON: {exc.body!r}")
        expect(isinstance(body, dict) and body.get("success") is False and body.get("status") == status
               and isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str)
               and isinstance(body["error"].get("type"), str),
               f"error body is not the contract shape: {exc.body!r}")
        expect(isinstance(exc.data, ErrorResponse) and exc.data.status == status,
               f"SDK did not deserialize an ErrorResponse (data={exc.data!r})")

    def expect_raises(cls, status: int, call) -> None:
        try:
            result = call()
        except ApiException as exc:
            error_shape(exc, status, cls)
            return
        raise CheckFailed(f"expected {cls.__name__} ({status}), got success: {result!r}"[:400])

    # ---- readiness ---------------------------------------------------------------------
    if not checks.run("proxy healthy", lambda: expect(wait_healthy(proxy), f"{proxy}/_proxy/health never answered 200")):
        print(f"e2e: {checks.passed} passed, {checks.failed} failed")
        return 1

    # ---- list and cache ----------------------------------------------------------------
    def first_list():
        response = api.list_keys_organizations_users_email_with_http_info(user, **t)
        expect(response.status_code == 200, f"status {response.status_code}")
        expect(header(response, "X-Cache") == "MISS", f"X-Cache {header(response, 'X-Cache')!r}, expected MISS")
        names = [k.get("name") for k in keys_of(response.data)]
        expect("admin-key" in names, f"admin-key not in the first list: {names}")
        state["first_list"] = response.data

    def second_list_is_hit():
        response = api.list_keys_organizations_users_email_with_http_info(user, **t)
        expect(response.status_code == 200, f"status {response.status_code}")
        expect(header(response, "X-Cache") == "HIT", f"X-Cache {header(response, 'X-Cache')!r}, expected HIT after a MISS")
        expect(response.data == state.get("first_list"), "the cached list differs from the first one")

    def own_headers_as_spelled():
        # ApiResponse.headers is handed to users as it is: a user writes headers["X-Cache"].
        headers = api.list_keys_organizations_users_email_with_http_info(user, **t).headers
        expect(headers["X-Cache"] == "HIT", f"headers['X-Cache'] is {headers['X-Cache']!r}, expected HIT")
        expect(headers["Via"] == "1.1 mixpeek-proxy", f"headers['Via'] is {headers['Via']!r}")
        expect(int(headers["Age"]) >= 0, f"headers['Age'] is {headers['Age']!r}")
        expect(len(headers["X-Request-Id"]) > 0, "headers['X-Request-Id'] is empty")

    checks.run("list: first call is a MISS and shows admin-key", first_list)
    checks.run("list: identical second call is an X-Cache HIT", second_list_is_hit)
    checks.run("list: the SDK reads headers['X-Cache'], ['Age'], ['Via'], ['X-Request-Id'] as spelled", own_headers_as_spelled)

    def validators_and_cache_status():
        response = api.list_keys_organizations_users_email_with_http_info(user, **t)
        etag = response.headers["ETag"]
        expect(etag.startswith('"') and etag.endswith('"'), f"headers['ETag'] is {etag!r}, expected a strong tag")
        status = response.headers["Cache-Status"]
        expect(status.startswith("mixpeek-proxy; hit; ttl="), f"headers['Cache-Status'] is {status!r}")
        state["etag"] = etag
        # The SDK raises for anything but 2xx: a 304 arrives as an ApiException with the fields.
        try:
            api.list_keys_organizations_users_email_with_http_info(user, _headers={"If-None-Match": etag}, **t)
            raise CheckFailed("If-None-Match with the list's own ETag did not answer 304")
        except ApiException as exc:
            expect(exc.status == 304, f"status {exc.status}, expected 304")
            expect(header(exc, "ETag") == etag, f"304's ETag {header(exc, 'ETag')!r}, expected {etag!r}")
            expect((header(exc, "Cache-Status") or "").startswith("mixpeek-proxy; hit"), f"304's Cache-Status {header(exc, 'Cache-Status')!r}")
            expect(not exc.body, f"304 with a body: {exc.body!r}")
        other = api.list_keys_organizations_users_email_with_http_info(user, _headers={"If-None-Match": '"someone-else"'}, **t)
        expect(other.status_code == 200 and other.data == state.get("first_list"), "another tag did not get the whole list")

    def head_like_get():
        url = f"{proxy}/v1/organizations/users/{urllib.parse.quote(user, safe='')}/api-keys"
        get = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        head = urllib.request.Request(url, method="HEAD", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(get, timeout=REQUEST_TIMEOUT) as got:
            body = got.read()
            get_etag = got.headers.get("ETag")
        with urllib.request.urlopen(head, timeout=REQUEST_TIMEOUT) as answered:
            expect(answered.status == 200, f"HEAD status {answered.status}")
            expect(answered.read() == b"", "HEAD answer has a body")
            expect(answered.headers.get("Content-Length") == str(len(body)),
                   f"HEAD Content-Length {answered.headers.get('Content-Length')!r}, GET body {len(body)} bytes")
            expect(answered.headers.get("X-Cache") == "HIT", f"HEAD X-Cache {answered.headers.get('X-Cache')!r}")
            expect(answered.headers.get("ETag") == get_etag, "HEAD and GET carry different ETags")

    checks.run("list: ETag and Cache-Status; If-None-Match with the ETag is a 304 (ApiException 304), another tag the whole list",
               validators_and_cache_status)
    checks.run("list: HEAD is served from the cache like GET: no body, the GET's Content-Length and ETag", head_like_get)

    # ---- create ------------------------------------------------------------------------
    def create():
        mutations.append(("create", user, name, "ok"))
        created = api.create_key_organizations_users_email(
            user, APIKeyCreateRequest(name=name, description="made by e2e", permissions=["read", "write"]), **t)
        expect(isinstance(created, APIKeyCreateResponse), f"returned {type(created).__name__}, expected APIKeyCreateResponse")
        expect(isinstance(created.key, str) and created.key.startswith("sk_"), f"key {created.key!r} does not start with sk_")
        forbidden["created key"] = created.key
        expect(created.key_hash == sha256_hex(created.key), "key_hash is not sha256(key)")
        expect(created.key_prefix == created.key[:10], f"key_prefix {created.key_prefix!r} is not key[:10]")
        expect(created.name == name, f"name {created.name!r}")
        state["created"] = created

    checks.run("create returns APIKeyCreateResponse with sk_ key, sha256 hash, prefix", create)

    def list_after_create():
        response = api.list_keys_organizations_users_email_with_http_info(user, **t)
        expect(header(response, "X-Cache") != "HIT", f"X-Cache {header(response, 'X-Cache')!r} right after a create")
        found = active(response.data, name)
        expect(len(found) == 1, f"new key {name} not listed once: {[k.get('name') for k in keys_of(response.data)]}")
        created = state.get("created")
        expect(created is not None and found[0].get("key_hash") == created.key_hash, "listed key_hash differs from create's")
        expect("key" not in found[0], "the list shows a plaintext key")

    checks.run("list after create includes the new key", list_after_create)

    # ---- update ------------------------------------------------------------------------
    description = "updated by e2e " + secrets.token_hex(3)

    def update():
        mutations.append(("update", user, name, "ok"))
        updated = api.update_key_organizations_users_email_name(
            user, name, APIKeyUpdateRequest(description=description), _headers={"traceparent": TRACEPARENT}, **t)
        expect(isinstance(updated, APIKeyModel), f"returned {type(updated).__name__}, expected APIKeyModel")
        expect(updated.description == description, f"description {updated.description!r}")

    checks.run("update returns APIKeyModel with the new description", update)

    def list_after_update():
        found = active(api.list_keys_organizations_users_email(user, **t), name)
        expect(len(found) == 1, "key missing from the list after update")
        expect(found[0].get("description") == description,
               f"list shows description {found[0].get('description')!r}, expected {description!r} (stale cache?)")

    checks.run("list after update shows the new description", list_after_update)

    # ---- rotate ------------------------------------------------------------------------
    def rotate():
        mutations.append(("rotate", user, name, "ok"))
        rotated = api.rotate_key_organizations_users_email_name(user, name, **t)
        expect(isinstance(rotated, APIKeyCreateResponse), f"returned {type(rotated).__name__}, expected APIKeyCreateResponse")
        expect(isinstance(rotated.key, str) and rotated.key.startswith("sk_"), f"key {rotated.key!r}")
        forbidden["rotated key"] = rotated.key
        created = state.get("created")
        expect(created is None or rotated.key != created.key, "rotate returned the same key")
        expect(rotated.key_hash == sha256_hex(rotated.key), "key_hash is not sha256(new key)")
        expect(rotated.key_prefix == rotated.key[:10], "key_prefix is not new key[:10]")
        state["rotated"] = rotated

    checks.run("rotate returns APIKeyCreateResponse with a new key", rotate)

    def list_after_rotate():
        found = active(api.list_keys_organizations_users_email(user, **t), name)
        expect(len(found) == 1, "key missing from the list after rotate")
        rotated, created = state.get("rotated"), state.get("created")
        expect(rotated is not None and found[0].get("key_hash") == rotated.key_hash,
               f"list key_hash {found[0].get('key_hash')!r} is not the rotated one (stale cache?)")
        expect(created is None or found[0].get("key_hash") != created.key_hash, "list still shows the old key_hash")

    checks.run("list after rotate shows the new key_hash", list_after_rotate)

    # ---- errors through the SDK --------------------------------------------------------
    def unauthorized_list():
        expect_raises(UnauthorizedException, 401, lambda: client_for(None).list_keys_organizations_users_email(user, **t))

    def unauthorized_create():
        mutations.append(("create", user, "e2e-no-token", "rejected"))
        expect_raises(UnauthorizedException, 401, lambda: client_for(None).create_key_organizations_users_email(
            user, APIKeyCreateRequest(name="e2e-no-token"), **t))

    def invalid_token_update():
        mutations.append(("update", user, name, "rejected"))
        expect_raises(UnauthorizedException, 401, lambda: client_for(bad_token).update_key_organizations_users_email_name(
            user, name, APIKeyUpdateRequest(description="nope"), **t))

    checks.run("401 list without a token -> UnauthorizedException", unauthorized_list)
    checks.run("401 create without a token -> UnauthorizedException", unauthorized_create)
    checks.run("401 update with an invalid token -> UnauthorizedException", invalid_token_update)

    def forbidden_update():
        mutations.append(("update", user, "admin-key", "rejected"))
        expect_raises(ForbiddenException, 403, lambda: api.update_key_organizations_users_email_name(
            user, "admin-key", APIKeyUpdateRequest(description="hijack"), **t))

    def forbidden_rotate():
        mutations.append(("rotate", user, "admin-key", "rejected"))
        expect_raises(ForbiddenException, 403, lambda: api.rotate_key_organizations_users_email_name(user, "admin-key", **t))

    def forbidden_delete():
        mutations.append(("delete", user, "admin-key", "rejected"))
        expect_raises(ForbiddenException, 403, lambda: api.delete_key_organizations_users_email_name(user, "admin-key", **t))

    checks.run("403 update admin-key -> ForbiddenException", forbidden_update)
    checks.run("403 rotate admin-key -> ForbiddenException", forbidden_rotate)
    checks.run("403 delete admin-key -> ForbiddenException", forbidden_delete)

    unknown = "e2e-no-such-key-" + secrets.token_hex(3)

    def not_found_update():
        mutations.append(("update", user, unknown, "rejected"))
        expect_raises(NotFoundException, 404, lambda: api.update_key_organizations_users_email_name(
            user, unknown, APIKeyUpdateRequest(description="x"), **t))

    def not_found_rotate():
        mutations.append(("rotate", user, unknown, "rejected"))
        expect_raises(NotFoundException, 404, lambda: api.rotate_key_organizations_users_email_name(user, unknown, **t))

    def not_found_delete():
        mutations.append(("delete", user, unknown, "rejected"))
        expect_raises(NotFoundException, 404, lambda: api.delete_key_organizations_users_email_name(user, unknown, **t))

    checks.run("404 update unknown key -> NotFoundException", not_found_update)
    checks.run("404 rotate unknown key -> NotFoundException", not_found_rotate)
    checks.run("404 delete unknown key -> NotFoundException", not_found_delete)

    # The SDK validates bodies client-side, so an invalid create goes through its low-level
    # call_api; the SDK's own response_deserialize must still raise its 422 exception.
    def raw_create(body):
        client = api.api_client
        serialized = client.param_serialize(
            method="POST",
            resource_path="/v1/organizations/users/{user_email}/api-keys",
            path_params={"user_email": user},
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerAuth"],
        )
        response = client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
        response.read()
        return client.response_deserialize(
            response_data=response,
            response_types_map={"200": "APIKeyCreateResponse", "401": "ErrorResponse", "403": "ErrorResponse",
                                "404": "ErrorResponse", "422": "ErrorResponse"},
        )

    def invalid_permissions():
        mutations.append(("create", user, "e2e-invalid", "rejected"))
        expect_raises(UnprocessableEntityException, 422, lambda: raw_create({"name": "e2e-invalid", "permissions": ["fly"]}))

    def missing_name():
        mutations.append(("create", user, None, "rejected"))
        expect_raises(UnprocessableEntityException, 422, lambda: raw_create({"description": "no name at all"}))

    checks.run("422 create with invalid permissions -> UnprocessableEntityException", invalid_permissions)
    checks.run("422 create without a name -> UnprocessableEntityException", missing_name)

    def list_after_errors():
        found = active(api.list_keys_organizations_users_email(user, **t), name)
        expect(len(found) == 1, "key missing after the refused mutations")
        expect(found[0].get("description") == description, "a refused update changed the key")
        names = [k.get("name") for k in keys_of(api.list_keys_organizations_users_email(user, **t))]
        expect("e2e-invalid" not in names and "e2e-no-token" not in names, f"a refused create shows up: {names}")

    checks.run("list after refused mutations is unchanged", list_after_errors)

    # ---- delete ------------------------------------------------------------------------
    def delete():
        mutations.append(("delete", user, name, "ok"))
        deleted = api.delete_key_organizations_users_email_name(user, name, **t)
        expect(isinstance(deleted, GenericSuccessResponse), f"returned {type(deleted).__name__}, expected GenericSuccessResponse")
        expect(deleted.success is True, f"success {deleted.success!r}")

    checks.run("delete returns GenericSuccessResponse(success=True)", delete)

    def list_after_delete():
        response = api.list_keys_organizations_users_email_with_http_info(user, **t)
        expect(header(response, "X-Cache") != "HIT", f"X-Cache {header(response, 'X-Cache')!r} right after a delete")
        names = [k.get("name") for k in keys_of(response.data)]
        expect(name not in names, f"deleted key {name} still listed (stale cache?): {names}")

    def list_revoked():
        response = api.list_keys_organizations_users_email_with_http_info(user, include_revoked=True, **t)
        expect(response.status_code == 200, f"status {response.status_code}")
        found = [k for k in keys_of(response.data) if k.get("name") == name]
        expect(len(found) == 1, f"include_revoked=True lists {len(found)} keys named {name}")
        expect(found[0].get("status") == "revoked", f"status {found[0].get('status')!r}, expected revoked")
        again = api.list_keys_organizations_users_email_with_http_info(user, include_revoked=True, **t)
        expect(header(again, "X-Cache") == "HIT", f"second include_revoked list X-Cache {header(again, 'X-Cache')!r}")
        expect(again.data == response.data, "the cached include_revoked list differs")

    checks.run("list after delete hides the key", list_after_delete)
    checks.run("list include_revoked=True shows it revoked (then HIT)", list_revoked)

    # ---- audit log ---------------------------------------------------------------------
    command_output: list[str] = []

    def run_binary(*arguments):
        done = subprocess.run([args.binary, *arguments], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        command_output.append(done.stdout + done.stderr)
        return done

    def audit_query():
        done = run_binary("audit", "query", "--data-dir", args.data_dir, "--format", "jsonl")
        expect(done.returncode == 0, f"audit query exited {done.returncode}: {done.stderr.strip()[:400]}")
        entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        state["audit"] = entries
        got = [(e.get("action"), e.get("user_email"), e.get("key_name"), e.get("outcome")) for e in entries]
        if got != mutations:
            lines = [f"expected {len(mutations)} records, got {len(got)}"]
            differences = [index for index in range(max(len(got), len(mutations)))
                           if (mutations[index] if index < len(mutations) else None) != (got[index] if index < len(got) else None)]
            for index in differences[:6]:
                want = mutations[index] if index < len(mutations) else None
                have = got[index] if index < len(got) else None
                lines.append(f"#{index + 1}: expected {want}, got {have}")
            if len(differences) > 6:
                lines.append(f"and {len(differences) - 6} more differences")
            raise CheckFailed("; ".join(lines))

    def audit_trace_ids():
        entries = state.get("audit")
        expect(entries is not None, "no audit query output")
        updates = [e for e in entries if e.get("action") == "update" and e.get("outcome") == "ok"]
        expect(updates and updates[0].get("trace_id") == TRACEPARENT[3:35],
               f"the update's trace_id is {updates[0].get('trace_id') if updates else None!r}, expected the client's")
        started = [e.get("trace_id") for e in entries if e is not updates[0]]
        expect(all(isinstance(tid, str) and len(tid) == 32 for tid in started), f"a record without a started trace id: {started}")

    def audit_details():
        entries = state.get("audit")
        expect(entries is not None, "no audit query output")
        seqs = [e.get("seq") for e in entries]
        expect(seqs == sorted(seqs), f"records are not oldest first: {seqs}")
        for entry in entries:
            expect(token not in entry.get("caller", "") and bad_token not in entry.get("caller", ""),
                   f"a caller field holds the bearer token: {entry.get('caller')!r}")
        created, rotated = state.get("created"), state.get("rotated")
        oks = {(e["action"], e["outcome"]): e for e in entries if e.get("key_name") == name}
        if created is not None:
            entry = oks.get(("create", "ok"), {})
            expect(entry.get("key_id") == created.key_id and entry.get("key_prefix") == created.key_prefix
                   and entry.get("key_hash") == created.key_hash,
                   f"create record's key identifiers {entry.get('key_id')}/{entry.get('key_prefix')}/{entry.get('key_hash')} "
                   f"differ from the response's")
        if rotated is not None:
            entry = oks.get(("rotate", "ok"), {})
            expect(entry.get("key_hash") == rotated.key_hash and entry.get("key_prefix") == rotated.key_prefix,
                   "rotate record's key identifiers differ from the response's")
        for entry, (action, _, key_name, outcome) in zip(entries, mutations):
            status = entry.get("upstream_status")
            if outcome == "ok":
                expect(status == 200, f"{action} {key_name} ok with upstream_status {status}")
            else:
                expect(isinstance(status, int) and 400 <= status < 500, f"{action} {key_name} rejected with upstream_status {status}")

    def audit_verify():
        done = run_binary("audit", "verify", "--data-dir", args.data_dir)
        expect(done.returncode == 0, f"audit verify exited {done.returncode}: {(done.stdout + done.stderr).strip()[:400]}")

    checks.run("audit query lists exactly the script's mutations, in order", audit_query)
    checks.run("audit records: caller fingerprints, new-key identifiers, upstream status", audit_details)
    checks.run("audit records carry the trace id: the client's traceparent for the update, one started for the rest", audit_trace_ids)
    checks.run("audit verify exits 0", audit_verify)

    # ---- no secret at rest -------------------------------------------------------------
    # A revoked key is shut out at once (issue 22): key K, made with the token, reads its
    # owner's and another user's lists through the proxy with the SDK; K is deleted, rotated
    # away or PATCHed revoked; the very next list with K's secret, for each user, is no HIT
    # (the fake answers it 401, as the API answers a dead key).
    from mixpeek.models.api_key_update_request import APIKeyUpdateRequest as _Update

    def revoked_key(way):
        def body():
            owner, other = f"e2e.rev-{way}@example.com", "e2e.rev-other@example.com"
            made = api.create_key_organizations_users_email(owner, APIKeyCreateRequest(name=f"k-{way}"), **t)
            secret = made.key
            forbidden[f"revoked key's secret ({way})"] = secret
            k = client_for(secret)
            for listed in (owner, other):
                k.list_keys_organizations_users_email_with_http_info(listed, **t)
                again = k.list_keys_organizations_users_email_with_http_info(listed, **t)
                expect(header(again, "X-Cache") == "HIT", f"{listed}: K's second list was {header(again, 'X-Cache')}")
            if way == "delete":
                api.delete_key_organizations_users_email_name(owner, f"k-{way}", **t)
            elif way == "rotate":
                rotated = k.rotate_key_organizations_users_email_name(owner, f"k-{way}", **t)
                forbidden[f"rotated key's new secret ({way})"] = rotated.key
            else:
                api.update_key_organizations_users_email_name(owner, f"k-{way}", _Update(status="revoked"), **t)
            # The other user first: a 401 drops all K's lists, which would hide what the revocation did.
            for listed in (other, owner):
                try:
                    answer = k.list_keys_organizations_users_email_with_http_info(listed, **t)
                    raise CheckFailed(f"{listed}: K's old secret was answered {answer.status_code} {header(answer, 'X-Cache')}")
                except UnauthorizedException as refused:
                    expect(header(refused, "X-Cache") != "HIT", f"{listed}: a 401 served from cache?")
        return body

    for way in ("delete", "rotate", "update"):
        checks.run(f"revocation ({way}): K's secret, cached for two users, gets no HIT and the upstream's 401 right after", revoked_key(way))

    def no_secrets_on_disk():
        needles = {label: value.encode() for label, value in forbidden.items()}
        expect("created key" in needles and "rotated key" in needles, "create/rotate gave no key to look for")
        scanned, leaks = 0, []
        for root, _, files in os.walk(args.data_dir):
            for file in files:
                path = os.path.join(root, file)
                try:
                    with open(path, "rb") as handle:
                        data = handle.read()
                except OSError as e:
                    leaks.append(f"{path}: unreadable ({e})")
                    continue
                scanned += 1
                for label, needle in needles.items():
                    if needle in data:
                        leaks.append(f"{label} in {os.path.relpath(path, args.data_dir)}")
        expect(scanned > 0, f"no files under {args.data_dir}")
        expect(not leaks, "; ".join(leaks))
        print(f"     (scanned {scanned} files for {len(needles)} secrets)", flush=True)

    checks.run("no plaintext key or bearer token in any file under the data dir", no_secrets_on_disk)

    def no_secrets_printed():
        expect(command_output, "no audit command output to look at")
        leaks = []
        for label, value in forbidden.items():
            if any(value in output for output in command_output):
                leaks.append(f"{label} printed by `mixpeek-proxy audit`")
            for log in args.log:
                try:
                    with open(log, "rb") as handle:
                        if value.encode() in handle.read():
                            leaks.append(f"{label} in the proxy's log {os.path.basename(log)}")
                except OSError as e:
                    leaks.append(f"{log}: unreadable ({e})")
        expect(not leaks, "; ".join(leaks))

    checks.run("no plaintext key or bearer token in audit command output or proxy logs", no_secrets_printed)

    print(f"e2e: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
