/// What `demo` prints: commands that work when pasted, against the running demo.
enum DemoTour {
    static let token = "sk_demo_0123456789abcdefghijklmnop"

    /// - Parameters:
    ///   - upstream: the built-in fake's URL, whose audit log `audit reconcile` reads.
    ///   - since: today's date (UTC), the reconcile window's start.
    static func text(proxy: String, dataDir: String, upstream: String, since: String) -> String {
        """
        mixpeek-proxy demo: proxy on \(proxy), in front of a built-in fake Mixpeek (no account, no network).
        Data (cache and audit log): \(dataDir). Stop with Ctrl-C.

        Try it with curl (any token of the form sk_... is its own organisation):
          export TOKEN=\(token)
          curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"name":"ci-key"}' \(proxy)/v1/organizations/users/alice@example.com/api-keys
          curl -si -H "Authorization: Bearer $TOKEN" \(proxy)/v1/organizations/users/alice@example.com/api-keys | grep -i -e x-cache -e '"total"'
          curl -si -H "Authorization: Bearer $TOKEN" \(proxy)/v1/organizations/users/alice@example.com/api-keys | grep -i -e x-cache -e '"total"'
          curl -s -X PATCH -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"description":"used by CI"}' \(proxy)/v1/organizations/users/alice@example.com/api-keys/ci-key
          curl -s -X POST -H "Authorization: Bearer $TOKEN" \(proxy)/v1/organizations/users/alice@example.com/api-keys/ci-key/rotate
          curl -s -X DELETE -H "Authorization: Bearer $TOKEN" \(proxy)/v1/organizations/users/alice@example.com/api-keys/ci-key
          curl -s -X DELETE -H "Authorization: Bearer $TOKEN" \(proxy)/v1/organizations/users/alice@example.com/api-keys/admin-key
          curl -s \(proxy)/_proxy/stats

        Or with the official Python SDK (pip install mixpeek==1.3.783):
          python3 -c 'import mixpeek; api = mixpeek.OrganizationAPIKeysApi(mixpeek.ApiClient(mixpeek.Configuration(host="\(proxy)", access_token="\(token)"))); print(api.create_key_organizations_users_email("bob@example.com", mixpeek.APIKeyCreateRequest(name="sdk-key")).key_prefix); print(api.list_keys_organizations_users_email("bob@example.com"))'

        Afterwards (in another terminal, while the demo runs or after):
          mixpeek-proxy cache stats --data-dir \(dataDir)
          mixpeek-proxy audit query --data-dir \(dataDir) --format table
          mixpeek-proxy audit verify --data-dir \(dataDir)

        Hold the audit log against the fake's own audit log (any sk_... token is an admin key there;
        a key made straight at \(upstream), around the proxy, would be reported and exit 1):
          export MIXPEEK_PROXY_RECONCILE_TOKEN=$TOKEN
          mixpeek-proxy audit reconcile --since \(since) --upstream \(upstream) --data-dir \(dataDir)

        Status page (savings, upstream, cache, audit; open it in a browser on this machine):
          \(proxy)/_proxy/
        """
    }
}
