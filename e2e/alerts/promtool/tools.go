//go:build tools

// Package tools records the main package e2e/alerts/build.sh compiles, so that
// `go mod tidy` keeps its full dependency graph in go.mod/go.sum.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
