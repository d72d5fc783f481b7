from mailstead.cli.main import main

main()
