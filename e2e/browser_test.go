//go:build e2e

package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// browser is headless Chromium driven over the DevTools protocol: pages
// are loaded, keys pressed and screenshots taken as a person at a
// keyboard would.
type browser struct {
	t    *testing.T
	ws   *websocket.Conn
	next int
}

func startBrowser(t *testing.T, headers map[string]string) *browser {
	t.Helper()
	dir := t.TempDir()
	start(t, nil, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--user-data-dir="+dir, "--window-size=1280,900", "--remote-debugging-address=127.0.0.1",
		"--remote-debugging-port=0", "--remote-allow-origins=http://127.0.0.1", "about:blank")
	var port string
	deadline := time.Now().Add(30 * time.Second)
	for port == "" {
		if b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort")); err == nil && strings.Contains(string(b), "\n") {
			port = strings.SplitN(string(b), "\n", 2)[0]
		} else if time.Now().After(deadline) {
			t.Fatal("chromium did not open its DevTools port")
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	var targets []struct{ Type, WebSocketDebuggerURL string }
	for {
		resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		if len(targets) > 0 && targets[0].WebSocketDebuggerURL != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	var page string
	for _, tg := range targets {
		if tg.Type == "page" {
			page = tg.WebSocketDebuggerURL
		}
	}
	if page == "" {
		t.Fatalf("no page target: %+v", targets)
	}
	ws, err := websocket.Dial(page, "", "http://127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	b := &browser{t: t, ws: ws}
	b.call("Page.enable", nil)
	b.call("Network.enable", nil)
	if headers != nil {
		b.call("Network.setExtraHTTPHeaders", map[string]any{"headers": headers})
	}
	return b
}

// call sends a DevTools command and returns its result (events that
// arrive meanwhile are dropped).
func (b *browser) call(method string, params any) json.RawMessage {
	b.t.Helper()
	b.next++
	id := b.next
	if err := websocket.JSON.Send(b.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		b.t.Fatalf("%s: %v", method, err)
	}
	b.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct{ Message string }
		}
		if err := websocket.JSON.Receive(b.ws, &msg); err != nil {
			b.t.Fatalf("%s: %v", method, err)
		}
		if msg.ID != id {
			continue
		}
		if msg.Error != nil {
			b.t.Fatalf("%s: %s", method, msg.Error.Message)
		}
		return msg.Result
	}
}

// eval returns the value of a JavaScript expression in the page, as a
// string.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	var r struct {
		Result struct{ Value any }
	}
	json.Unmarshal(b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &r)
	return fmt.Sprint(r.Result.Value)
}

// settle waits for the page at a URL containing want to finish loading.
func (b *browser) settle(want string) {
	b.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !(strings.Contains(b.eval("decodeURIComponent(location.href)"), want) && b.eval("document.readyState") == "complete") {
		if time.Now().After(deadline) {
			b.t.Fatalf("the page did not become %q (it is %s)", want, b.eval("location.href"))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

func (b *browser) open(url string) {
	b.t.Helper()
	b.call("Page.navigate", map[string]any{"url": url})
	b.settle(url)
}

// key presses a key (Tab, Enter).
func (b *browser) key(name string) {
	codes := map[string]int{"Tab": 9, "Enter": 13}
	params := map[string]any{"key": name, "code": name, "windowsVirtualKeyCode": codes[name]}
	if name == "Enter" {
		params["text"] = "\r"
	}
	b.call("Input.dispatchKeyEvent", merge(params, "type", "keyDown"))
	b.call("Input.dispatchKeyEvent", merge(params, "type", "keyUp"))
}

func merge(m map[string]any, k string, v any) map[string]any {
	out := map[string]any{k: v}
	for kk, vv := range m {
		out[kk] = vv
	}
	return out
}

// tabTo presses Tab until the focused element matches the CSS selector
// (at most 60 times) and returns how many presses it took.
func (b *browser) tabTo(selector string) int {
	b.t.Helper()
	for n := 1; n <= 60; n++ {
		b.key("Tab")
		if b.eval(fmt.Sprintf("document.activeElement && document.activeElement.matches(%q)", selector)) == "true" {
			return n
		}
	}
	b.t.Fatalf("Tab never reached %s on %s", selector, b.eval("location.href"))
	return 0
}

// focused waits until the element matching selector has the focus (a
// page's autofocus lands a moment after it has loaded: an Enter pressed
// before that goes nowhere).
func (b *browser) focused(selector string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.eval(fmt.Sprintf("document.activeElement && document.activeElement.matches(%q)", selector)) != "true" {
		if time.Now().After(deadline) {
			b.t.Fatalf("%s never had the focus on %s", selector, b.eval("location.href"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *browser) typeText(s string) { b.call("Input.insertText", map[string]any{"text": s}) }

// screenshot saves the page as build/screenshots/name.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	var r struct{ Data string }
	json.Unmarshal(b.call("Page.captureScreenshot", map[string]any{"format": "png"}), &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil || len(png) < 5000 {
		b.t.Fatalf("screenshot %s: %d bytes, %v", name, len(png), err)
	}
	root, _ := filepath.Abs("..")
	p := filepath.Join(root, "build", "screenshots", name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

func (b *browser) text() string { return b.eval("document.body.innerText") }
