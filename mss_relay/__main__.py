from mss_relay.cli import main

raise SystemExit(main())
