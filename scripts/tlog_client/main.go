// An outside verifier of a lone mixpeek-proxy's audit log, written against Go's own
// golang.org/x/mod/sumdb/tlog and sumdb/note (Debian's golang-golang-x-mod-dev), built offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o tlog-client ./scripts/tlog_client
//
// It reads the log as any C2SP tlog-tiles client would, over HTTP from the proxy's
// /_proxy/log/ paths, and trusts nothing the proxy says but what the verifier key signs:
//
//	tlog-client [-saved FILE] [-save FILE] URL VERIFIER_KEY [VERIFIER_KEY...]
//
// With several keys (a group's members, each signing the group's one log with a key of its
// own), the checkpoint must carry a valid signature by every one of them.
//
// verifies the checkpoint's signature, every hash tile it reads against the checkpoint's root
// (tlog.TileHashReader), the inclusion of every entry of every entry bundle
// (tlog.ProveRecord/CheckRecord), and, with -saved, that the tree extends a checkpoint saved
// earlier (tlog.ProveTree/CheckTree). Exit 0 when all holds; 1 naming the first bad entry index.
package main

import (
	"bytes"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8

type checkpoint struct {
	origin string
	tree   tlog.Tree
}

func fail(format string, args ...any) {
	fmt.Printf("tlog-client: FAILED: "+format+"\n", args...)
	os.Exit(1)
}

func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// open checks msg's signatures by verifiers, every one of which must have signed (a signature
// by another key is ignored), and parses the C2SP checkpoint in it.
func open(msg []byte, verifiers []note.Verifier, what string) checkpoint {
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	if err != nil {
		fail("%s: signature: %v", what, err)
	}
	for _, v := range verifiers {
		signed := false
		for _, sig := range n.Sigs {
			signed = signed || (sig.Name == v.Name() && sig.Hash == v.KeyHash())
		}
		if !signed {
			fail("%s: no signature by %s+%08x (%d of %d keys signed)", what, v.Name(), v.KeyHash(), len(n.Sigs), len(verifiers))
		}
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		fail("%s: not a checkpoint", what)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		fail("%s: bad size %q", what, lines[1])
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("%s: bad root hash %q", what, lines[2])
	}
	var root tlog.Hash
	copy(root[:], raw)
	return checkpoint{origin: lines[0], tree: tlog.Tree{N: size, Hash: root}}
}

// tiles fetches hash tiles by their C2SP paths: Go's Tile.Path() names the height
// (tile/8/L/N), C2SP's does not (tile/L/N).
type tiles struct {
	base  string
	cache map[string][]byte
}

func (t *tiles) Height() int { return height }

func (t *tiles) ReadTiles(want []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(want))
	for i, tile := range want {
		path := "tile/" + strings.TrimPrefix(tile.Path(), fmt.Sprintf("tile/%d/", height))
		data, ok := t.cache[path]
		if !ok {
			var err error
			if data, err = get(t.base + path); err != nil {
				return nil, err
			}
			// Kept only to save a fetch: TileHashReader authenticates tiles against the tree on every read.
			t.cache[path] = data
		}
		out[i] = data
	}
	return out, nil
}

func (t *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func bundlePath(n, size int64) string {
	w := size - n*(1<<height)
	if w > 1<<height {
		w = 1 << height
	}
	path := tlog.Tile{H: height, L: 0, N: n, W: int(w)}.Path()
	return "tile/entries/" + strings.TrimPrefix(path, fmt.Sprintf("tile/%d/0/", height))
}

func entries(bundle []byte) ([][]byte, error) {
	var out [][]byte
	for len(bundle) > 0 {
		if len(bundle) < 2 {
			return nil, fmt.Errorf("truncated entry length")
		}
		n := int(bundle[0])<<8 | int(bundle[1])
		if len(bundle) < 2+n {
			return nil, fmt.Errorf("truncated entry")
		}
		out = append(out, bundle[2:2+n])
		bundle = bundle[2+n:]
	}
	return out, nil
}

func main() {
	saved := flag.String("saved", "", "a signed checkpoint saved earlier: the tree must extend it")
	save := flag.String("save", "", "write the checkpoint fetched to this file")
	flag.Parse()
	if flag.NArg() < 2 {
		fmt.Fprintln(os.Stderr, "usage: tlog-client [-saved FILE] [-save FILE] URL VERIFIER_KEY [VERIFIER_KEY...]")
		os.Exit(2)
	}
	base := strings.TrimSuffix(flag.Arg(0), "/") + "/_proxy/log/"
	var verifiers []note.Verifier
	for _, key := range flag.Args()[1:] {
		verifier, err := note.NewVerifier(key)
		if err != nil {
			fmt.Fprintf(os.Stderr, "tlog-client: bad verifier key: %v\n", err)
			os.Exit(2)
		}
		verifiers = append(verifiers, verifier)
	}
	msg, err := get(base + "checkpoint")
	if err != nil {
		fail("%v", err)
	}
	current := open(msg, verifiers, "the checkpoint served")
	// The log signs as itself: a checkpoint whose origin is not its key's name is another log's.
	for _, verifier := range verifiers {
		if current.origin != verifier.Name() {
			fail("the checkpoint's origin %q is not the name of the key it is signed with (%q)", current.origin, verifier.Name())
		}
	}
	if *save != "" {
		if err := os.WriteFile(*save, msg, 0o644); err != nil {
			fail("%v", err)
		}
	}
	size, root := current.tree.N, current.tree.Hash
	reader := tlog.TileHashReader(current.tree, &tiles{base: base, cache: map[string][]byte{}})
	if size > 0 {
		if th, err := tlog.TreeHash(size, reader); err != nil || th != root {
			fail("the hash tiles do not make the checkpoint's root: %v", err)
		}
	}
	for n := int64(0); n*(1<<height) < size; n++ {
		bundle, err := get(base + bundlePath(n, size))
		if err != nil {
			fail("entry %d: %v", n*(1<<height), err)
		}
		list, err := entries(bundle)
		if err != nil {
			fail("entry bundle %d: %v", n, err)
		}
		want := size - n*(1<<height)
		if want > 1<<height {
			want = 1 << height
		}
		if int64(len(list)) != want {
			fail("entry %d: the bundle holds %d entries, not %d", n*(1<<height)+int64(len(list)), len(list), want)
		}
		for i, entry := range list {
			index := n*(1<<height) + int64(i)
			proof, err := tlog.ProveRecord(size, index, reader)
			if err != nil {
				fail("entry %d: no inclusion proof: %v", index, err)
			}
			if err := tlog.CheckRecord(proof, size, root, index, tlog.RecordHash(entry)); err != nil {
				fail("entry %d is not the one the checkpoint's tree holds (changed): %v", index, err)
			}
			if bytes.IndexByte(entry, '\n') >= 0 {
				fail("entry %d is not one line", index)
			}
		}
	}
	report := fmt.Sprintf("checkpoint %q of %d entries: %d signature(s), tiles and every entry's inclusion verified", current.origin, size, len(verifiers))
	if *saved != "" {
		old, err := os.ReadFile(*saved)
		if err != nil {
			fail("%v", err)
		}
		earlier := open(old, verifiers[:1], "the saved checkpoint")
		if earlier.origin != current.origin {
			fail("the saved checkpoint is of log %q, not of %q", earlier.origin, current.origin)
		}
		if earlier.tree.N > size {
			fail("entry %d: the log has %d entries, fewer than the saved checkpoint's %d (truncated)", size, size, earlier.tree.N)
		}
		proof, err := tlog.ProveTree(size, earlier.tree.N, reader)
		if err != nil {
			fail("no consistency proof from %d to %d entries: %v", earlier.tree.N, size, err)
		}
		if err := tlog.CheckTree(proof, size, root, earlier.tree.N, earlier.tree.Hash); err != nil {
			fail("the tree of %d entries does not extend the saved checkpoint of %d (history rewritten before entry %d): %v", size, earlier.tree.N, earlier.tree.N, err)
		}
		report += fmt.Sprintf("; consistent with the saved checkpoint of %d", earlier.tree.N)
	}
	fmt.Println("tlog-client: " + report)
}
