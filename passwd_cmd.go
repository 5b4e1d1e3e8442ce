package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/term"
)

// passwdHash reads a password (asking twice, without echo, on a
// terminal; else the first line of in) and returns its bcrypt hash.
func passwdHash(in *os.File, prompt io.Writer) (string, error) {
	var pw []byte
	if term.IsTerminal(int(in.Fd())) {
		fmt.Fprint(prompt, "Password: ")
		a, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", err
		}
		fmt.Fprint(prompt, "Again: ")
		b, err := term.ReadPassword(int(in.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		pw = a
	} else {
		line, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		pw = []byte(strings.TrimRight(line, "\r\n"))
	}
	if len(pw) == 0 {
		return "", errors.New("empty password")
	}
	if len(pw) > 72 {
		return "", errors.New("password longer than 72 bytes (bcrypt's limit)")
	}
	hash, err := bcrypt.GenerateFromPassword(pw, bcrypt.DefaultCost)
	return string(hash), err
}

// passwdCommand: berth passwd, print a bcrypt hash of a password read from stdin.
func passwdCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "passwd",
		Usage: "print a bcrypt hash of a password read from stdin (or asked for on a terminal)",
		Action: func(c *cli.Context) error {
			hash, err := passwdHash(os.Stdin, stderr)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout, hash)
			return nil
		},
	}
}
