// Package tools pins the developer tools transitca uses (golangci-lint), in
// a module of their own so that the daemon's go.mod stays small. Run them
// with "make lint".
package tools
