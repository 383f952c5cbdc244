from nclab.cli import main

main()
