package main

// ingest all composes the tiers' own configs, so it has every flag they
// have: the frontend's under the same name, the other tiers' with their
// tier's name as a prefix (the feed's --listen is --feed.listen), but for
// allShared, registered once for every tier, and allExceptions, which
// cannot apply. TestAllHasEveryTierFlag holds all three to the binary's
// --help.

// allPrefixes are the prefixes the tiers' flags carry in ingest all.
var allPrefixes = map[string]string{"frontend": "", "middletier": "middletier.", "storage": "storage.", "feed": "feed."}

// allShared are flags several tiers have that ingest all registers once,
// under their own name: one logger, the same keys for devices and
// dashboard readers, one device registry for the store's labels and the
// feed's groups, one TLS certificate for every listener; the storage
// writer's --self-monitor.interval, which writes the metrics of the whole
// process; and the storage writer's --sink, the one way to say where the
// engine stores, under the same name in both; --debug.pprof, which
// profiles the one process on every port it serves.
var allShared = []string{
	"log.level", "log.format", "debug.pprof", "procs.follow-load", "insecure-no-auth", "registry.file", "self-monitor.interval", "sink",
	"auth.hs256-secret-file", "auth.rs256-public-keys", "auth.es256-public-keys", "auth.keys-dir",
	"auth.issuer", "auth.audience", "auth.require-exp", "auth.leeway",
	"tls.cert-file", "tls.key-file",
}

// allExceptions are the tiers' flags that ingest all does not have, and
// why: each says where a tier finds another, and all wires its tiers to
// one another itself.
var allExceptions = map[string]map[string]string{
	"frontend": {
		"uplink.middletiers": "the uplink forwards to the middletier of the same process",
		"uplink.dns":         "the uplink forwards to the middletier of the same process",
		"commands.homes":     "the command home is the middletier's of the same process (--middletier.command.addr; empty: no commands)",
	},
	"storage": {
		"middletiers.stream":   "the storage writer follows the middletier of the same process",
		"middletiers.consumer": "the storage writer follows the middletier of the same process",
	},
	"feed": {
		"middletiers":          "the feed follows the middletier of the same process",
		"middletiers.consumer": "the feed follows the middletier of the same process",
	},
}

// allFlagName is the name ingest all gives the flag name of tier, and
// false if it has none.
func allFlagName(tier, name string) (string, bool) {
	if _, ok := allExceptions[tier][name]; ok {
		return "", false
	}
	for _, s := range allShared {
		if s == name {
			return name, true
		}
	}
	return allPrefixes[tier] + name, true
}
