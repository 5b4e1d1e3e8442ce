//go:build !linux

package server

// setNotsentLowat does nothing here: berth is built for Linux; this keeps
// other systems compiling for development.
func setNotsentLowat(fd uintptr, n int) {}
