// A Go HTTP client (standard library only). Go makes its own system calls, so LD_PRELOAD
// cannot reach it.   fetch URL OUTFILE   -> writes the body, prints the peer address it saw.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fetch URL OUTFILE")
		os.Exit(2)
	}
	var peer string
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	transport := &http.Transport{Proxy: nil, Dial: func(network, addr string) (net.Conn, error) {
		c, err := dialer.Dial(network, addr)
		if err == nil {
			peer = c.RemoteAddr().String()
		}
		return c, err
	}}
	resp, err := (&http.Client{Transport: transport, Timeout: 60 * time.Second}).Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "get:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	out, err := os.Create(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n, err := io.Copy(out, resp.Body)
	fmt.Fprintln(os.Stderr, "peer", peer)
	if err != nil || (resp.ContentLength >= 0 && n != resp.ContentLength) {
		fmt.Fprintln(os.Stderr, "copy:", n, "of", resp.ContentLength, err)
		os.Exit(1)
	}
}
