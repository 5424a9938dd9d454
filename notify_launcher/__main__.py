from notify_launcher.cli import main

raise SystemExit(main())
