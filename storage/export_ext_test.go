package storage

// StopExtServers stops the external store servers the tests started; the
// package's TestMain calls it after the tests and before the leak check.
var StopExtServers = stopExtServers
