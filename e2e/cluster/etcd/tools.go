//go:build tools

// Package tools records the main package build.sh compiles, so that
// `go mod tidy` keeps its full dependency graph in go.mod/go.sum.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
