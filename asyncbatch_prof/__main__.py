from asyncbatch_prof.cli import main

main()
