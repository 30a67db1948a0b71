// The outside judge of the verifiable log: Go's golang.org/x/mod/sumdb/tlog and sumdb/note
// (Debian's golang-golang-x-mod-dev), built offline with
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o tlog-judge ./scripts/tlog_judge
//
// `tlog-judge vectors` prints, as JSON, what Go computes for a log of known entries: tree
// hashes, inclusion and consistency proofs, hash tiles, and a checkpoint signed by a key made
// from a known seed. Tests/MixpeekLogTests/Fixtures/go-tlog-vectors.json is its output, and
// MixpeekLogTests checks the Swift code against it; scripts/log_vectors.sh checks that the
// file is still what Go prints.
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type proof struct {
	Index int64    `json:"index,omitempty"`
	Old   int64    `json:"old,omitempty"`
	Size  int64    `json:"size"`
	Proof []string `json:"proof"`
}

type tile struct {
	Path string `json:"path"`
	Hex  string `json:"hex"`
}

type vectors struct {
	Entries     []string `json:"entries"`
	TreeHashes  []string `json:"tree_hashes"`
	Inclusion   []proof  `json:"inclusion"`
	Consistency []proof  `json:"consistency"`
	Tiles       []tile   `json:"tiles"`
	SignerKey   string   `json:"signer_key"`
	VerifierKey string   `json:"verifier_key"`
	Checkpoint  string   `json:"signed_checkpoint"`
}

func entry(i int) []byte { return []byte(fmt.Sprintf("mixpeek-proxy test entry %d\n", i)) }

func hexes(hs []tlog.Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = hex.EncodeToString(h[:])
	}
	return out
}

func main() {
	if len(os.Args) != 2 || os.Args[1] != "vectors" {
		fmt.Fprintln(os.Stderr, "usage: tlog-judge vectors")
		os.Exit(2)
	}
	const n = 300
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			out[i] = stored[x]
		}
		return out, nil
	})
	var v vectors
	for i := 0; i < n; i++ {
		hashes, err := tlog.StoredHashes(int64(i), entry(i), reader)
		check(err)
		stored = append(stored, hashes...)
		v.Entries = append(v.Entries, string(entry(i)))
		th, err := tlog.TreeHash(int64(i+1), reader)
		check(err)
		v.TreeHashes = append(v.TreeHashes, hex.EncodeToString(th[:]))
	}
	sizes := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 31, 32, 33, 100, 255, 256, 257, 300}
	for _, size := range sizes {
		for index := int64(0); index < size; index += 1 + size/20 {
			p, err := tlog.ProveRecord(size, index, reader)
			check(err)
			v.Inclusion = append(v.Inclusion, proof{Index: index, Size: size, Proof: hexes(p)})
		}
		for _, old := range sizes {
			if old >= size {
				continue
			}
			p, err := tlog.ProveTree(size, old, reader)
			check(err)
			v.Consistency = append(v.Consistency, proof{Old: old, Size: size, Proof: hexes(p)})
		}
	}
	for _, t := range []tlog.Tile{{H: 8, L: 0, N: 0, W: 256}, {H: 8, L: 0, N: 1, W: 44}, {H: 8, L: 1, N: 0, W: 1}, {H: 8, L: 0, N: 1, W: 3}} {
		data, err := tlog.ReadTileData(t, reader)
		check(err)
		// Go's paths carry the height (tile/8/L/N); C2SP's, of height 8 only, do not.
		v.Tiles = append(v.Tiles, tile{Path: strings.Replace(t.Path(), "tile/8/", "tile/", 1), Hex: hex.EncodeToString(data)})
	}
	seed := bytes.NewReader([]byte("mixpeek-proxy tlog judge seed 32"))
	skey, vkey, err := note.GenerateKey(seed, "mixpeek-proxy.test/log")
	check(err)
	signer, err := note.NewSigner(skey)
	check(err)
	root, err := tlog.TreeHash(n, reader)
	check(err)
	text := fmt.Sprintf("mixpeek-proxy.test/log\n%d\n%s\n", n, root.String())
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	check(err)
	v.SignerKey, v.VerifierKey, v.Checkpoint = skey, vkey, string(signed)
	out, err := json.MarshalIndent(v, "", " ")
	check(err)
	os.Stdout.Write(append(out, '\n'))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlog-judge:", err)
		os.Exit(1)
	}
}
