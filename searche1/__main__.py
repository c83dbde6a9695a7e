from searche1.cli import main

main()
