from nodes.runtime import main

main()
