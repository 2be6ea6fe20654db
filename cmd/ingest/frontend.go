package main

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/coder/websocket"

	"github.com/ingest-io/ingest/command"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/frontend"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
)

// frontendConfig is the frontend tier: the device server, its WAL and the
// uplink that forwards the WAL to the middletiers.
type frontendConfig struct {
	listen, mqttListen, id, walDir    string
	origins                           string
	mqttReceiveMax                    int
	wal                               walConfig
	maxConns, maxFrame, maxMsg, batch int
	maxFields, maxName, maxString     int
	rate                              float64
	burst                             int
	ping, pong, write, drain          time.Duration
	serviceRestart                    bool
	uplink                            uplinkConfig
	commands                          commandsConfig
	f                                 flags

	// walShown is the directory named when another process holds the WAL
	// (ingest all: its --data.dir); empty: walDir.
	walShown string

	// devices is the device registry: its disabled devices are refused,
	// and their connections closed when it changes. nil: none.
	devices *registry.Registry
}

// commandsConfig is the flags of the frontend's side of device commands.
// ingest all sets direct instead of the homes' endpoints.
type commandsConfig struct {
	homes  string
	maxTTL time.Duration
	direct []string
}

// uplinkConfig is the uplink's flags. ingest all sets direct instead of
// the middletiers' endpoints.
type uplinkConfig struct {
	middletiers, dns       string
	window                 int
	ack, failover, flushTO time.Duration
	ret, linger            time.Duration
	direct                 []string
}

func newFrontendConfig() frontendConfig {
	d, u := frontend.DefaultOptions(), uplink.DefaultOptions()
	host, _ := os.Hostname()
	return frontendConfig{
		listen: ":8080", id: host, wal: newWALConfig(), mqttReceiveMax: d.MQTT.ReceiveMaximum,
		maxConns: d.MaxConnections, maxFrame: d.MaxFrameBytes, maxMsg: d.MaxMessageBytes, batch: d.MaxBatchMessages,
		maxFields: d.MaxFields, maxName: d.MaxFieldNameBytes, maxString: d.MaxStringBytes,
		rate: d.Rate, burst: d.Burst, ping: d.PingInterval, pong: d.PongTimeout, write: d.WriteTimeout, drain: d.DrainWindow,
		uplink:   uplinkConfig{window: u.Window, ack: u.AckTimeout, failover: u.Failover, ret: u.Return, linger: u.Linger, flushTO: 5 * time.Second},
		commands: commandsConfig{maxTTL: command.DefaultOptions().MaxTTL},
	}
}

func (c *frontendConfig) register(f flags) {
	c.f = f
	f.str(&c.listen, "listen", "address to listen on for devices, health and metrics")
	f.str(&c.mqttListen, "mqtt.listen", "address to listen on for MQTT devices over TCP (e.g. :1883); empty: off (MQTT over WebSocket is always served at /mqtt on --listen)")
	f.integer(&c.mqttReceiveMax, "mqtt.receive-maximum", "QoS 1 and 2 publishes an MQTT session may have unacknowledged")
	f.str(&c.id, "id", "frontend id written into every envelope; keep it stable for the life of the WAL directory")
	f.str(&c.walDir, "wal.dir", "WAL directory (required)")
	c.wal.register(f, "devices are answered overloaded")
	f.str(&c.origins, "origins", "comma-separated browser origins allowed to connect")
	f.integer(&c.maxConns, "max-connections", "maximum open device connections")
	f.integer(&c.maxFrame, "max-frame-bytes", "largest frame; larger closes the connection with 1009")
	f.integer(&c.maxMsg, "max-message-bytes", "largest message; larger is rejected with too_large")
	f.integer(&c.batch, "max-batch", "most messages in one batch frame")
	f.integer(&c.maxFields, "max-fields", "most fields (numbers, booleans, strings, nested ones included) in one message; more is rejected with too_many_fields")
	f.integer(&c.maxName, "max-field-name-bytes", "longest field name, flattened with dots; longer is rejected with invalid_field")
	f.integer(&c.maxString, "max-string-bytes", "longest string value; longer is rejected with invalid_field")
	f.float(&c.rate, "rate", "messages per second per device")
	f.integer(&c.burst, "burst", "burst of messages per device")
	f.duration(&c.ping, "ping-interval", "ping a connection silent for this long")
	f.duration(&c.pong, "pong-timeout", "close a connection whose pong is this late")
	f.duration(&c.write, "write-timeout", "close a connection a write to which (an ack, say) has waited this long: a device that stopped reading")
	f.duration(&c.drain, "drain-window", "time over which connections are closed at shutdown")
	f.boolean(&c.serviceRestart, "drain.service-restart", "close with 1012 (service restart) instead of 1001 (going away) at shutdown")
	u := &c.uplink
	f.str(&u.middletiers, "uplink.middletiers", "comma-separated ZeroMQ endpoints of the middletiers' ingest sockets (tcp://host:5555); each frontend ranks them by its --id (rendezvous hashing), so frontends spread over them")
	f.str(&u.dns, "uplink.dns", "host:port of a headless Service whose addresses are the middletiers (instead of --uplink.middletiers)")
	f.integer(&u.window, "uplink.window", "batches in flight to the middletier")
	f.duration(&u.linger, "uplink.linger", "how long committed messages may wait for more before they are forwarded (sooner once a full batch waits): one middletier fsync per linger at a low rate; devices' acks never wait for it (0: forward at once)")
	f.duration(&u.ack, "uplink.ack-timeout", "send again from the oldest unacknowledged entry after this long without an ack (at least 1ms)")
	f.duration(&u.failover, "uplink.failover", "move to the next middletier after it acknowledges nothing for this long (at least 1ms)")
	f.duration(&u.ret, "uplink.return", "when not on its first choice (or finding middletiers by --uplink.dns), look this often whether the first choice is back, and go back to it after draining the current one (at least 1ms)")
	f.duration(&u.flushTO, "uplink.flush-timeout", "at shutdown, how long to wait for the middletier to acknowledge what the WAL holds")
	f.str(&c.commands.homes, "commands.homes", "comma-separated ZeroMQ endpoints of the middletiers' command homes (--command.addr), in the same order on every frontend; serves the command API on --listen (no commands if empty)")
	f.duration(&c.commands.maxTTL, "commands.max-ttl", "longest time to live the command API accepts; keep it within the homes' --command.max-ttl")
}

// options are the server's options but for the listener and auth.
func (c *frontendConfig) options() frontend.Options {
	o := frontend.Options{
		ID: c.id, MaxConnections: c.maxConns, MaxFrameBytes: c.maxFrame, MaxMessageBytes: c.maxMsg,
		MaxBatchMessages: c.batch, MaxFields: c.maxFields, MaxFieldNameBytes: c.maxName, MaxStringBytes: c.maxString,
		Rate: c.rate, Burst: c.burst,
		PingInterval: c.ping, PongTimeout: c.pong, WriteTimeout: c.write, DrainWindow: c.drain, OriginPatterns: splitList(c.origins),
		MQTT: frontend.MQTTOptions{ReceiveMaximum: c.mqttReceiveMax},
	}
	if c.serviceRestart {
		o.ShutdownCode = websocket.StatusServiceRestart
	}
	return o
}

// build opens the WAL and builds the server and the uplink as parts of p.
// It returns the WAL and the address devices connect to.
func (c *frontendConfig) build(p *process, a *authConfig) (*wal.Log, net.Addr, error) {
	if c.walDir == "" {
		return nil, nil, c.f.required("wal.dir")
	}
	d := frontend.DefaultOptions() // 0 stands for the default
	if msg, frame := cmp.Or(c.maxMsg, d.MaxMessageBytes), cmp.Or(c.maxFrame, d.MaxFrameBytes); msg > frame {
		return nil, nil, &usageError{sub: c.f.fs.Name(), err: fmt.Errorf("--%s %d is over --%s %d: a message is at most a frame",
			c.f.name("max-message-bytes"), msg, c.f.name("max-frame-bytes"), frame)}
	}
	if burst, batch := cmp.Or(c.burst, d.Burst), cmp.Or(c.batch, d.MaxBatchMessages); burst < batch {
		return nil, nil, &usageError{sub: c.f.fs.Name(), err: fmt.Errorf("--%s %d is below --%s %d: a full batch could never pass",
			c.f.name("burst"), burst, c.f.name("max-batch"), batch)}
	}
	if c.mqttReceiveMax > 65535 {
		return nil, nil, &usageError{sub: c.f.fs.Name(), err: fmt.Errorf("--%s %d: MQTT allows at most 65535",
			c.f.name("mqtt.receive-maximum"), c.mqttReceiveMax)}
	}
	opts := c.options()
	var err error
	if opts.Auth, err = a.options(); err != nil {
		return nil, nil, err
	}
	opts.InsecureNoAuth, opts.Gatherer, opts.Handlers = a.noAuth, p.reg, p.pprofHandlers()
	if c.devices != nil {
		opts.Revoked = c.devices.Disabled
	}
	if a.noAuth && !c.f.given("listen") {
		c.listen = "127.0.0.1:8080" // without auth, loopback only
	}
	if err := a.loopbackOnly(c.f, "listen", c.listen, "mqtt.listen", c.mqttListen); err != nil {
		return nil, nil, err
	}
	log, err := c.wal.open(p, "frontend", c.walDir, firstOf(c.walShown, c.walDir))
	if err != nil {
		return nil, nil, err
	}
	if c.mqttListen != "" {
		if opts.MQTTListener, err = p.listenTLS(c.f.name("mqtt.listen"), c.mqttListen); err != nil {
			return nil, nil, err
		}
		p.onClose("mqtt listener", func() error { return closeListener(opts.MQTTListener) })
		// Its own line, which bench and the tests read, whether the
		// tier's line is logged or not.
		p.lg.Info("mqtt listening", "addr", opts.MQTTListener.Addr().String(), "tls", p.tls != nil)
	}
	if opts.Downlink, err = c.buildDownlink(p); err != nil {
		return nil, nil, err
	}
	opts.CommandMaxTTL = c.commands.maxTTL
	if opts.Listener, err = p.listenTLS(c.f.name("listen"), c.listen, "http/1.1"); err != nil {
		return nil, nil, err
	}
	srv, err := frontend.New(opts, log, p.reg, p.lg)
	if err != nil {
		return nil, nil, err
	}
	p.onClose("frontend", srv.Close)
	p.add(part{name: "frontend", stage: stageDevices, run: srv.Run})
	if c.devices != nil {
		p.add(part{name: "revocations", stage: stageSupport, run: func(ctx context.Context) error {
			return closeRevoked(ctx, c.devices, srv)
		}})
	}
	if err := c.buildUplink(p, log); err != nil {
		return nil, nil, err
	}
	addr := opts.Listener.Addr()
	p.built("frontend listening", "addr", addr.String(), "tls", p.tls != nil, "id", opts.ID, "wal", c.walDir, "last_index", log.LastIndex())
	return log, addr, nil
}

// buildDownlink builds the link to the command homes, if any are given.
func (c *frontendConfig) buildDownlink(p *process) (*downlink.Link, error) {
	homes := c.commands.direct
	if homes == nil {
		var err error
		if homes, err = endpoints(c.f, "commands.homes", c.commands.homes); err != nil {
			return nil, err
		}
	}
	if len(homes) == 0 {
		return nil, nil
	}
	link, err := downlink.New(downlink.Options{Frontend: c.id, Homes: homes}, p.reg, p.lg)
	if err != nil {
		return nil, err
	}
	p.onClose("downlink", link.Close)
	p.add(part{name: "downlink", stage: stageUplink, run: link.Run})
	return link, nil
}

// buildUplink builds the forwarder to the middletiers, or warns that none
// is configured: the WAL then only fills.
func (c *frontendConfig) buildUplink(p *process, log *wal.Log) error {
	u := c.uplink
	o := uplink.Options{ID: c.id, Window: u.window, Linger: lingerOption(u.linger), AckTimeout: u.ack, Failover: u.failover, Return: u.ret, Middletiers: u.direct}
	switch {
	case u.direct != nil:
	case u.middletiers != "" && u.dns != "":
		return fmt.Errorf("--%s and --%s exclude each other", c.f.name("uplink.middletiers"), c.f.name("uplink.dns"))
	case u.middletiers != "":
		var err error
		if o.Middletiers, err = endpoints(c.f, "uplink.middletiers", u.middletiers); err != nil {
			return err
		}
	case u.dns != "":
		host, port, err := net.SplitHostPort(u.dns)
		if err != nil {
			return fmt.Errorf("parse --%s: %w", c.f.name("uplink.dns"), err)
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			return fmt.Errorf("parse --%s port: %w", c.f.name("uplink.dns"), err)
		}
		o.Resolve = uplink.DNSResolver(host, n)
	default:
		p.lg.Warn("no middletiers configured (--uplink.middletiers): messages are made durable here and not forwarded; the WAL fills to its bound")
		return nil
	}
	link, err := uplink.New(o, log, p.reg, p.lg)
	if err != nil {
		return err
	}
	p.onClose("uplink", link.Close)
	p.add(part{name: "uplink", stage: stageUplink, run: link.Run, settle: p.settleWAL("uplink", log, u.flushTO)})
	return nil
}

// runFrontend serves devices until SIGTERM, then drains them, flushes the
// uplink and closes the WAL last.
func runFrontend(ctx context.Context, args []string) error {
	var (
		c  = newFrontendConfig()
		a  authConfig
		rc registryConfig
		f  = newFlags("frontend")
	)
	c.register(f)
	a.register(f, "devices (device id from ?device=)")
	rc.register(f, "whose disabled devices are refused, and their connections closed")
	return runServing(ctx, f, args, "--listen (WebSocket, MQTT over WebSocket, health and metrics) and --mqtt.listen (MQTT over TLS)", func(p *process) error {
		var err error
		if c.devices, err = rc.buildIfGiven(p); err != nil {
			return err
		}
		_, _, err = c.build(p, &a)
		return err
	})
}

// closeRevoked closes the connections of the devices the registry
// disables, each time it takes a new content, until ctx ends.
func closeRevoked(ctx context.Context, devices *registry.Registry, srv *frontend.Server) error {
	for {
		changed := devices.Changed()
		srv.CloseRevoked()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// firstOf is the first of its arguments that is not empty.
func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// lingerOption is an Options.Linger (storage's, uplink's) for a --linger
// flag: a zero flag asks for none, which the options spell as negative.
func lingerOption(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
