package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/l4lb/l4lb/sync/api"
)

func cmdVIPs(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("vips")
	addr := fs.String("api", "127.0.0.1:62080", "address of the daemon's HTTP API")
	asJSON := fs.Bool("json", false, "print the API's JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: l4lb vips [--api ADDR] [--json]\n\nLists the VIPs of a running daemon: addresses, backends and their states.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	url := "http://" + *addr + "/v1/vips"
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w (is l4lb run listening there?)", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var vips []api.VIP
	if err := json.Unmarshal(body, &vips); err != nil {
		return fmt.Errorf("decode %s: %w", url, err)
	}
	return printVIPs(stdout, vips)
}

// printVIPs writes one line per backend, the VIP's columns on its first.
func printVIPs(w io.Writer, vips []api.VIP) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VIP\tPROTO\tADDRESS\tAPP\tBACKEND\tSTATE\tTASK")
	for _, v := range vips {
		addr := fmt.Sprintf("%s:%d", v.IP, v.Port)
		if strings.Contains(v.IP, ":") {
			addr = fmt.Sprintf("[%s]:%d", v.IP, v.Port)
		}
		app := strings.Join(v.Apps, ",")
		if len(v.Backend) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\tno backend: refused\t-\n", v.VIP, v.Protocol, addr, app)
			continue
		}
		for i, b := range v.Backend {
			be := fmt.Sprintf("%s:%d", b.IP, b.Port)
			if strings.Contains(b.IP, ":") {
				be = fmt.Sprintf("[%s]:%d", b.IP, b.Port)
			}
			if i == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.VIP, v.Protocol, addr, app, be, b.State, b.Task)
			} else {
				fmt.Fprintf(tw, "\t\t\t\t%s\t%s\t%s\n", be, b.State, b.Task)
			}
		}
	}
	return tw.Flush()
}
