module github.com/drainscaler/drainscaler/examples/session-app

go 1.25.0
