"""python -m examples.user_service --port P --version V [--releases FILE]"""

from examples.user_service.app import main

raise SystemExit(main())
