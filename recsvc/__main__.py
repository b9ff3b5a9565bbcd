from recsvc.cli import main

main()
