package uplink

// SetAfterFill has f run after each of k's fills, on Run's goroutine.
// Set it before Run.
func SetAfterFill(k *Link, f func()) { k.afterFill = f }
