package downlink_test

import (
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/ingest-io/ingest/downlink"
)

// routeStatuses are the HTTP statuses each route answers with: its
// success and every error the handler can give.
var routeStatuses = map[string][]int{
	"POST /v1/devices/{id}/commands": {202, 400, 401, 403, 409, 413, 503},
	"GET /v1/devices/{id}/commands":  {200, 400, 401, 403, 503},
	"GET /v1/commands/{cid}":         {200, 401, 403, 404, 503},
	"DELETE /v1/commands/{cid}":      {200, 401, 403, 404, 409, 503},
}

type openAPI struct {
	OpenAPI    string                          `yaml:"openapi"`
	Paths      map[string]map[string]yaml.Node `yaml:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]struct {
				Enum []string `yaml:"enum"`
			} `yaml:"properties"`
			Enum []string `yaml:"enum"`
		} `yaml:"schemas"`
	} `yaml:"components"`
}

// TestOpenAPI: docs/commands.openapi.yaml describes every route of the API
// and no other, each with the statuses it answers, and lists the error
// codes and states the API uses.
func TestOpenAPI(t *testing.T) {
	b, err := os.ReadFile("../docs/commands.openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPI
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	documented := map[string][]int{}
	for path, item := range doc.Paths {
		for method, node := range item {
			if method == "parameters" {
				continue
			}
			route := strings.ToUpper(method) + " " + path
			var op struct {
				OperationID string         `yaml:"operationId"`
				Responses   map[string]any `yaml:"responses"`
			}
			if err := node.Decode(&op); err != nil {
				t.Fatalf("%s: %v", route, err)
			}
			var codes []int
			for c := range op.Responses {
				n, err := strconv.Atoi(c)
				if err != nil {
					t.Fatalf("%s: response %q is not a status", route, c)
				}
				codes = append(codes, n)
			}
			slices.Sort(codes)
			documented[route] = codes
			if op.OperationID == "" {
				t.Errorf("%s: no operationId", route)
			}
		}
	}
	if got, want := slices.Sorted(maps.Keys(documented)), slices.Sorted(slices.Values(downlink.Routes)); !slices.Equal(got, want) {
		t.Fatalf("documented routes %q, served %q", got, want)
	}
	for route, want := range routeStatuses {
		if !slices.Contains(downlink.Routes, route) {
			t.Fatalf("routeStatuses names %s, which is not served", route)
		}
		if got := documented[route]; !slices.Equal(got, want) {
			t.Errorf("%s: documented statuses %v, the handler answers %v", route, got, want)
		}
	}
	codes := []string{downlink.CodeUnauthorized, downlink.CodeForbidden, downlink.CodeInvalidDevice, downlink.CodeInvalidJSON,
		downlink.CodeInvalidCommand, downlink.CodeInvalidTTL, downlink.CodeInvalidState, downlink.CodeTooLarge,
		downlink.CodeNotFound, downlink.CodeNotCancellable, downlink.CodeKeyReused, downlink.CodeUnavailable, downlink.CodeFull}
	if got := doc.Components.Schemas["Error"].Properties["code"].Enum; !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(codes))) {
		t.Errorf("documented error codes %q, the API's %q", got, codes)
	}
	states := []string{"queued", "sent", "acknowledged", "failed", "expired", "cancelled"}
	if got := doc.Components.Schemas["State"].Enum; !slices.Equal(got, states) {
		t.Errorf("documented states %q, want %q", got, states)
	}
}
