//go:build nostorage

package main

import (
	"context"
	"errors"
)

// Built with -tags nostorage (make image's slim image): the frontend,
// middletier and feed without the embedded TSDB and its query engine, for
// the tiers that never store. storage and all, which embed the TSDB, are
// left out.

func init() { variant = " nostorage" }

var errNoStorage = errors.New("not in this build (-tags nostorage leaves out the embedded TSDB): use the full image")

func runStorage(context.Context, []string) error { return errNoStorage }

func runAll(context.Context, []string) error { return errNoStorage }
